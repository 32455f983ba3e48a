"""Supervised training and top-1 accuracy, shared by the baseline script and fine-tuning passes.

Deterministic for a seed on one device: ``torch.manual_seed`` fixes the
initial state of dropout, and each epoch's shuffle has its own seed.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from modelzip.evaluation import torch_accuracy
from modelzip.sources.data import DataBundle


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
    """Train on ``bundle.train`` with SGD (Nesterov momentum 0.9), cosine-decayed per step.

    Returns one record per epoch: epoch (1-based), mean training loss,
    validation accuracy (None when the validation split is empty), seconds.
    Leaves the model in eval mode.
    """
    torch.manual_seed(seed)
    batch_size = batch_size or bundle.batch_size
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    total_steps = max(1, epochs * math.ceil(len(bundle.train) / batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    history = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        batches = bundle.batches("train", batch_size, shuffle=True, seed=_epoch_seed(seed, epoch))
        loss = _train_one_epoch(model, batches, optimizer, schedule)
        validation = None
        if len(bundle.validation):
            validation = torch_accuracy(model, bundle.batches("validation"))
        record = {"epoch": epoch, "loss": loss, "val_accuracy": validation,
                  "seconds": time.perf_counter() - started}
        history.append(record)
        if log is not None:
            log(_describe(record, epochs))
    model.eval()
    return history


def _train_one_epoch(model: nn.Module, batches, optimizer, schedule) -> float:
    """Mean cross-entropy over the epoch's samples."""
    device = _device_of(model)
    model.train()
    loss_sum, seen = 0.0, 0
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += loss.item() * len(labels)
        seen += len(labels)
    return loss_sum / max(seen, 1)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A different shuffle per epoch, and no overlap between (seed, epoch) pairs."""
    return int(np.random.SeedSequence([seed & 0xFFFF_FFFF_FFFF_FFFF, epoch]).generate_state(1)[0])


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _describe(record: dict[str, Any], epochs: int) -> str:
    validation = "n/a" if record["val_accuracy"] is None else f"{record['val_accuracy']:.4f}"
    return (f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f}  "
            f"val_acc {validation}  {record['seconds']:.1f}s")
