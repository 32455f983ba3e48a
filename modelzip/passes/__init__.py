"""Built-in passes, one module each, registered in pyproject.toml like any plugin."""
