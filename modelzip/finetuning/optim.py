"""Optimizers and learning-rate schedules of the training loop.

Schedules are one per-step multiplier of the peak ``lr`` (a ``LambdaLR``),
stepped after every optimizer step. ``warmup`` is a FRACTION of all optimizer
steps, so the same recipe works for any dataset size, ``epochs:`` or ``steps:``:

- ``cosine``: linear warmup from ~0 to lr, then half a cosine down to 0.
- ``onecycle``: Smith & Topin's one-cycle shape with torch's ``OneCycleLR``
  defaults: from lr/25 up to lr over the warmup (0.3 when not given), then
  cosine down to lr/25/1e4. Only the learning rate cycles (momentum is fixed).
- ``constant``: linear warmup, then lr.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

ONECYCLE_DEFAULT_WARMUP = 0.3  # torch.optim.lr_scheduler.OneCycleLR's pct_start
_ONECYCLE_START = 1 / 25  # OneCycleLR's div_factor
_ONECYCLE_END = _ONECYCLE_START / 1e4  # OneCycleLR's final_div_factor


@dataclass
class LrShape:
    """lr multiplier at optimizer step ``step`` (0-based). Plain fields: it checkpoints as data."""

    kind: str  # cosine | onecycle | constant
    total_steps: int
    warmup_steps: int

    def __call__(self, step: int) -> float:
        start = _ONECYCLE_START if self.kind == "onecycle" else 0.0
        if step < self.warmup_steps:
            # (step + 1): the very first step already learns something.
            return start + (1.0 - start) * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        end = _ONECYCLE_END if self.kind == "onecycle" else 0.0
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps(kind: str, warmup: float | None, total_steps: int) -> int:
    fraction = warmup if warmup is not None else (ONECYCLE_DEFAULT_WARMUP if kind == "onecycle" else 0.0)
    return int(round(fraction * total_steps))


def make_optimizer(model: nn.Module, name: str, *, lr: float, weight_decay: float,
                   momentum: float) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    # Nesterov momentum: the usual choice for fine-tuning CNNs; it needs momentum > 0.
    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, nesterov=momentum > 0,
                           weight_decay=weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, kind: str, *, total_steps: int,
                  warmup: float | None) -> torch.optim.lr_scheduler.LambdaLR:
    shape = LrShape(kind, total_steps, warmup_steps(kind, warmup, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, shape)
