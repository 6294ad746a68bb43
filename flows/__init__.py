"""Prefect flows: thin wrappers that wire the stages of `infodcl` and log them to MLflow."""
