"""Rank selection from a singular-value spectrum."""
from __future__ import annotations

import math

import torch


def choose_rank(singular_values: torch.Tensor, config) -> int:
    """Smallest rank meeting `energy` (fraction of sum s^2) or `rank_ratio`, at least `min_rank`,
    rounded up to a multiple of `round_to` but never past the full rank.

    Rounding up keeps at least the energy asked for. A rank rounded up to the full rank makes
    the factorized form dearer than the layer, which is then kept as it is.
    """
    full = len(singular_values)
    if config.energy is not None:
        squared = singular_values.double() ** 2
        kept = torch.cumsum(squared, 0) / squared.sum()
        # First index where the retained fraction reaches the target (tolerating rounding).
        rank = int(torch.searchsorted(kept, torch.tensor(config.energy - 1e-12, dtype=kept.dtype))) + 1
    else:
        rank = math.ceil(config.rank_ratio * full)
    rank = max(rank, config.min_rank, 1)
    return min(full, math.ceil(rank / config.round_to) * config.round_to)
