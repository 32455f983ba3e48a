"""Training objectives: cross-entropy, and knowledge distillation from a frozen teacher.

Distillation follows Hinton et al. (2015), "Distilling the Knowledge in a Neural
Network": the student matches the teacher's temperature-softened class
probabilities, and the soft term is scaled by T² so its gradients keep the
same magnitude as T changes::

    loss = alpha · T² · KL(p_teacher ‖ p_student) + (1 − alpha) · CE(student, labels)
    p_x  = softmax(logits_x / T)

KL runs from the teacher's distribution to the student's (``F.kl_div(log p_student,
p_teacher)``), averaged over the batch, as in the paper and in torch's own examples.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from modelzip import tasks


class CrossEntropy:
    """Plain supervised objective: ``(images, output, labels) -> loss``; a multi-task model's
    ({task: labels} targets, modelzip.tasks) is the sum over tasks, each × its ``task_weights``."""

    distills = False

    def __init__(self, label_smoothing: float = 0.0, task_weights: dict[str, float] | None = None) -> None:
        self.label_smoothing = label_smoothing
        self.task_weights = task_weights

    def __call__(self, images: Tensor, output, labels) -> Tensor:
        return tasks.weighted_loss(
            output, labels, lambda _task, logits, target: F.cross_entropy(
                logits, target, label_smoothing=self.label_smoothing), self.task_weights)

    def to(self, device: torch.device | str) -> CrossEntropy:
        return self


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *, alpha: float,
                      temperature: float, label_smoothing: float = 0.0) -> Tensor:
    """``alpha·T²·KL(p_teacher ‖ p_student) + (1−alpha)·CE`` (see the module docstring)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits.float() / t, dim=-1),
                    F.log_softmax(teacher_logits.float() / t, dim=-1),
                    reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    return alpha * t * t * soft + (1.0 - alpha) * hard


class Distillation:
    """Distillation objective; the teacher runs in eval mode under no_grad.

    The teacher is a private frozen copy, so moving it to the training device
    never moves (or changes) the model it came from.
    """

    distills = True

    def __init__(self, teacher: nn.Module, *, alpha: float, temperature: float,
                 label_smoothing: float = 0.0, task_weights: dict[str, float] | None = None) -> None:
        self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
        self.alpha = alpha
        self.temperature = temperature
        self.label_smoothing = label_smoothing
        self.task_weights = task_weights

    def to(self, device: torch.device | str) -> Distillation:
        self.teacher.to(device)
        return self

    def __call__(self, images: Tensor, output, labels) -> Tensor:
        """Each head matches the teacher's same head (by task name; the first output without tasks)."""
        with torch.no_grad():
            teacher_output = self.teacher(images)
        teacher = {name: logits for name, logits, _ in tasks.pairs(teacher_output, labels)}
        return tasks.weighted_loss(
            output, labels, lambda task, logits, target: distillation_loss(
                logits, teacher[task], target, alpha=self.alpha, temperature=self.temperature,
                label_smoothing=self.label_smoothing), self.task_weights)


def check_teacher_fits(teacher: nn.Module, student: nn.Module, sample: Tensor) -> str | None:
    """None when both give logits of the same shape on ``sample``, else a description of the mismatch."""
    shapes = []
    for model in (teacher, student):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                shapes.append(tasks.shapes(model(sample)))
        except RuntimeError as exc:
            return f"{'teacher' if not shapes else 'student'} fails on the input: {exc}"
        finally:
            model.train(was_training)
    if shapes[0] != shapes[1]:
        return f"teacher logits {shapes[0]} vs student logits {shapes[1]}"
    return None


class TeacherMismatch(ValueError):
    """The teacher's logits do not line up with the student's (other classes, or it fails)."""

    def __init__(self, mismatch: str) -> None:
        self.mismatch = mismatch
        super().__init__(f"the teacher's outputs do not match the student's: {mismatch}")


def make_objective(teacher: nn.Module | None = None, *, alpha: float = 0.5, temperature: float = 4.0,
                   label_smoothing: float = 0.0, task_weights: dict[str, float] | None = None):
    """Cross-entropy without a teacher, else distillation from ``teacher``."""
    if teacher is None:
        return CrossEntropy(label_smoothing, task_weights)
    return Distillation(teacher, alpha=alpha, temperature=temperature, label_smoothing=label_smoothing,
                        task_weights=task_weights)


def check_objective(objective, student: nn.Module, sample: Tensor) -> None:
    """A distillation's teacher must give logits of the student's shape on ``sample``
    (raises TeacherMismatch otherwise); cross-entropy has nothing to check."""
    if not objective.distills:
        return
    mismatch = check_teacher_fits(objective.teacher, student, sample)
    if mismatch is not None:
        raise TeacherMismatch(mismatch)
