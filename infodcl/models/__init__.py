"""Recommenders under one contract (spec sections 2-5): BPR-MF, LightGCN and InfoDCL."""
