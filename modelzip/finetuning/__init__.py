"""Training machinery behind the ``finetune`` pass and ``modelzip.training``.

Imports torch: only pass ``run`` methods and scripts import it, never the CLI's
light path. The one training loop is :func:`fit`; :func:`finetune` trains a copy of a
model with it. Plain inputs only (settings, data, objective, hooks): no recipe, no pass
context; the passes map their configs onto these.
"""
from modelzip.finetuning.augment import Augment, auto_augment, choose_augment
from modelzip.finetuning.distill import CrossEntropy, Distillation, TeacherMismatch, distillation_loss, make_objective
from modelzip.finetuning.loop import FitResult, Hooks, NonFiniteLoss, TrainSettings, fit
from modelzip.finetuning.train import Finetuned, FinetuneFailure, finetune

__all__ = ["Augment", "CrossEntropy", "Distillation", "FinetuneFailure", "Finetuned", "FitResult", "Hooks",
           "NonFiniteLoss", "TeacherMismatch", "TrainSettings", "auto_augment", "choose_augment",
           "distillation_loss", "finetune", "fit", "make_objective"]
