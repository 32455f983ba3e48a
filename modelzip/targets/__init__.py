"""Built-in deploy targets, one file per target (registered in pyproject.toml under
``modelzip.targets``, exactly as a third-party target registers its own)."""
