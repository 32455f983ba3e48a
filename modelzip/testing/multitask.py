"""A tiny two-task model and dataset as ``<module>:<callable>`` sources (tests and docs share them).

``two_head`` returns ``{"band": logits, "column": logits}`` (or a tuple, in that order); in
``two_task_dataset`` the task ``band`` is which horizontal band of the image is brightened (4
classes) and ``column`` which vertical one (3 classes), both learned in an epoch or two.
Imports torch only when called.
"""
from __future__ import annotations

from typing import Any

TASKS = ("band", "column")
CLASSES = {"band": 4, "column": 3}
SIZE = 16  # image side: 1 x 16 x 16


def two_head(dict_output: bool = True, hidden: int = 32):
    """A small CNN with a shared 32-unit layer and a linear head per task (about 4,000 parameters)."""
    from torch import nn

    from modelzip.zoo import MultiTaskCNN

    features = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
    )
    trunk = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, hidden), nn.ReLU())
    heads = {task: nn.Linear(hidden, CLASSES[task]) for task in TASKS}
    return (MultiTaskCNN if dict_output else _tuple_outputs())(features, trunk, heads)


def one_head(task: str = "band", hidden: int = 32):
    """``two_head``'s layers with a single head, for ``task``: a single-output teacher of the ``merge``
    pass (two of them hold about twice the student's parameters)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        nn.Flatten(), nn.Linear(16 * 4 * 4, hidden), nn.ReLU(), nn.Linear(hidden, CLASSES[task]),
    )


def _tuple_outputs():
    from modelzip.zoo import MultiTaskCNN

    class TupleOutputs(MultiTaskCNN):
        def forward(self, x):
            return tuple(super().forward(x).values())

    return TupleOutputs


def two_task_dataset(train: int = 512, eval: int = 256, seed: int = 0, noise: float = 0.3,
                     drop_task: str | None = None):
    """(train, eval) datasets of (image, {"band": int, "column": int}) items; ``drop_task`` leaves
    one task out of the targets (what preflight must catch)."""
    import torch

    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> TaskItems:
        labels = {task: torch.randint(0, CLASSES[task], (n,), generator=generator) for task in TASKS}
        images = noise * torch.randn((n, 1, SIZE, SIZE), generator=generator)
        for task, axis in (("band", 2), ("column", 3)):
            width = SIZE // CLASSES[task]
            for c in range(CLASSES[task]):
                index = [slice(None)] * 4
                index[axis] = slice(c * width, (c + 1) * width)
                images[tuple([labels[task] == c, *index[1:]])] += 1.0
        kept = {task: column for task, column in labels.items() if task != drop_task}
        return TaskItems(images, kept)

    return split(train), split(eval)


class TaskItems:
    """A map-style dataset of (image, {task: int}) items over whole tensors."""

    def __init__(self, images, labels: dict[str, Any]) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], {task: int(column[index]) for task, column in self.labels.items()}
