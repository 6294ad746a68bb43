"""Auxiliary metadata (spec section 1): LightGCN pretraining, sparse similarity graphs, channels."""
