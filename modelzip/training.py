"""Supervised training of a classifier from scratch (used by scripts/train_baseline.py).

A thin front of :func:`modelzip.finetuning.fit`, the one training loop of the
code base, with the settings a baseline wants: SGD with Nesterov momentum 0.9,
cosine-decayed per step, no augmentation, and the LAST epoch's weights (no
best-epoch selection). Deterministic for a seed on the CPU.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from modelzip.finetuning import Hooks, TrainSettings, fit
from modelzip.sources.data import DataBundle

_HISTORY_KEYS = ("epoch", "loss", "val_accuracy", "seconds", "samples_per_s")


def train_classifier(
    model: nn.Module,
    bundle: DataBundle,
    *,
    epochs: int,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    batch_size: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Train on ``bundle.train``; returns one record per epoch.

    Each record: epoch (1-based), mean training loss, validation accuracy
    (None when the validation split is empty), seconds, samples/s.
    Trains on the device the model is on and leaves it in eval mode.
    """
    parameter = next(model.parameters(), None)
    device = str(parameter.device) if parameter is not None else "cpu"
    settings = TrainSettings(epochs=epochs, lr=lr, weight_decay=weight_decay, momentum=0.9,
                             schedule="cosine", batch_size=batch_size, seed=seed, device=device,
                             restore_best=False)
    result = fit(model, bundle, settings, hooks=Hooks(log=log))
    return [{key: record[key] for key in _HISTORY_KEYS} for record in result.history]
