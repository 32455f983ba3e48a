"""Where a run gets its inputs: datasets (and, elsewhere, models)."""
