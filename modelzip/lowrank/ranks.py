"""Rank selection from a singular-value spectrum."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LowRankSettings:
    """What the factorization does (the lowrank pass maps its config onto it)."""

    energy: float | None = None  # keep the smallest rank retaining this fraction of sum s^2; or:
    rank_ratio: float | None = None  # keep this fraction of the full rank
    conv: str = "channel"  # channel | spatial | none
    linear: bool = True  # factorize Linear layers
    min_rank: int = 1
    round_to: int = 16  # ranks rounded up to a multiple of this (capped at the full rank)
    ignore: tuple[str, ...] = ()  # globs on module names left as they are


def choose_rank(singular_values: torch.Tensor, settings: LowRankSettings) -> int:
    """Smallest rank meeting `energy` (fraction of sum s^2) or `rank_ratio`, at least `min_rank`,
    rounded up to a multiple of `round_to` but never past the full rank.

    Rounding up keeps at least the energy asked for. A rank rounded up to the full rank makes
    the factorized form dearer than the layer, which is then kept as it is.
    """
    full = len(singular_values)
    if settings.energy is not None:
        squared = singular_values.double() ** 2
        kept = torch.cumsum(squared, 0) / squared.sum()
        # First index where the retained fraction reaches the target (tolerating rounding).
        rank = int(torch.searchsorted(kept, torch.tensor(settings.energy - 1e-12, dtype=kept.dtype))) + 1
    else:
        rank = math.ceil(settings.rank_ratio * full)
    rank = max(rank, settings.min_rank, 1)
    return min(full, math.ceil(rank / settings.round_to) * settings.round_to)
