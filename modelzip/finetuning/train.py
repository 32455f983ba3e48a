"""Fine-tuning a model: a trained copy of it, or a FinetuneFailure that says why not.

The one entry point of the ``finetune`` pass into this package. It takes plain values (the
module, the data, TrainSettings, an objective, hooks) and never sees the recipe or the
pass's context: modelzip/passes/_training.py maps the pass's config and context onto them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from modelzip.errors import MachineryFailure
from modelzip.finetuning.distill import check_objective
from modelzip.finetuning.loop import FitResult, Hooks, TrainSettings, fit
from modelzip.finetuning.runtime import LocalRuntime, current_runtime

if TYPE_CHECKING:  # pragma: no cover - a plain value object; its module reads recipe specs
    from modelzip.sources.data import DataBundle


class FinetuneFailure(MachineryFailure):
    """Fine-tuning cannot start or finish; the pass turns it into a PassError."""


@dataclass(frozen=True)
class Finetuned:
    module: nn.Module  # the trained copy, on the CPU in eval mode
    result: FitResult


def finetune(module: nn.Module, data: DataBundle, settings: TrainSettings, objective,
             hooks: Hooks | None = None,
             runtime: LocalRuntime | None = None) -> Finetuned:
    """Train a copy of ``module`` (never the module itself) on ``data.train``.

    Raises FinetuneFailure for an empty training split, TeacherMismatch when a distillation's
    teacher does not fit the model, and NonFiniteLoss when the loss becomes NaN or infinite.
    """
    if len(data.train) == 0:
        raise FinetuneFailure("the training split is empty", got=f"{len(data.train)} training images",
                              expected="at least one batch")
    model = copy.deepcopy(module)
    check_objective(objective, model, first_images(data))
    result = fit(model, data, settings, objective, hooks, runtime or current_runtime())
    return Finetuned(model.cpu().eval(), result)


def first_images(data: DataBundle):
    """Two training images: enough to see what a model outputs."""
    return next(iter(data.batches("train", 2)))[0]
