"""Data layer: catalog, readers, preparation to canonical tables, contracts runner, graphs."""
