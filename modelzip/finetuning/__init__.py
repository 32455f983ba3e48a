"""Training machinery behind the ``finetune`` pass and ``modelzip.training``.

Imports torch: only pass ``run`` methods and scripts import it, never the CLI's
light path. The one training loop is :func:`fit`; the rest are its parts.
"""
from modelzip.finetuning.augment import Augment, auto_augment
from modelzip.finetuning.distill import CrossEntropy, Distillation, distillation_loss
from modelzip.finetuning.loop import FitResult, Hooks, NonFiniteLoss, TrainSettings, fit

__all__ = ["Augment", "CrossEntropy", "Distillation", "FitResult", "Hooks", "NonFiniteLoss",
           "TrainSettings", "auto_augment", "distillation_loss", "fit"]
