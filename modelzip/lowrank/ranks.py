"""Rank selection from a singular-value spectrum."""
from __future__ import annotations

import math

import torch


def choose_rank(singular_values: torch.Tensor, config) -> int:
    """Smallest rank meeting `energy` (fraction of sum s^2) or `rank_ratio`, at least `min_rank`."""
    full = len(singular_values)
    if config.energy is not None:
        squared = singular_values.double() ** 2
        kept = torch.cumsum(squared, 0) / squared.sum()
        # First index where the retained fraction reaches the target (tolerating rounding).
        rank = int(torch.searchsorted(kept, torch.tensor(config.energy - 1e-12, dtype=kept.dtype))) + 1
    else:
        rank = math.ceil(config.rank_ratio * full)
    return max(1, min(full, max(rank, config.min_rank)))
