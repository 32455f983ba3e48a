"""N single-task teachers seen as one multi-task teacher.

finetuning's Distillation matches each head of the student to the same-named head of its teacher
(modelzip.tasks.pairs); a :class:`TeacherEnsemble` returns ``{task: logits}`` from one single-task
model per task, so multi-teacher distillation is that same objective with this module as teacher.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from modelzip import tasks


class TeacherEnsemble(nn.Module):
    """``forward(x) -> {task: logits of that task's teacher}``, in ``teachers``' order.

    Each teacher is a single-output model (a tensor, or the first of a tuple or dict:
    modelzip.tasks.primary). Kept in eval mode: ``train()`` never switches its BatchNorm or
    Dropout to training behaviour.
    """

    def __init__(self, teachers: dict[str, nn.Module]) -> None:
        super().__init__()
        self.teachers = nn.ModuleDict(teachers)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> TeacherEnsemble:
        return self  # frozen teachers stay in eval mode

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {task: tasks.primary(teacher(x)) for task, teacher in self.teachers.items()}


class TeacherOutputMismatch(ValueError):
    """A teacher's logits do not line up with the student's head of its task."""

    def __init__(self, task: str, got: str, expected: str) -> None:
        self.task, self.got, self.expected = task, got, expected
        super().__init__(f"teacher {task!r}: got {got}, expected {expected}")


def check_teachers(ensemble: TeacherEnsemble, student: nn.Module, sample: Tensor) -> None:
    """Each teacher runs on ``sample`` and gives logits of the shape of the student's head of its
    task; raises TeacherOutputMismatch naming the first that does not (or TaskMismatch, from
    modelzip.tasks, when the student has no output for a teacher's task)."""
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            heads = tasks.by_name(student(sample), tuple(ensemble.teachers))
            for task, teacher in ensemble.teachers.items():
                try:
                    logits = tasks.primary(teacher(sample))
                except RuntimeError as exc:
                    first_line = (str(exc).strip().splitlines() or [""])[0][:200]
                    raise TeacherOutputMismatch(task, f"an error on the student's input "
                                                f"{tuple(sample.shape)}: {first_line}",
                                                "a model that takes the student's input") from exc
                if logits.shape != heads[task].shape:
                    raise TeacherOutputMismatch(task, f"logits of shape {tuple(logits.shape)}",
                                                f"the shape of the student's {task!r} head, "
                                                f"{tuple(heads[task].shape)}")
    finally:
        student.train(was_training)
