"""Multi-task models: a model's outputs and a dataset's targets, named by task.

A model returns a tensor (one task), a tuple (one output per task, in ``model.tasks`` order) or a
dict (by task name); a dataset item's target is an int (one task) or ``{task: int}``. Batches of a
recipe with ``model.tasks`` carry their targets as ``{task: tensor}`` in the recipe's task order
(``sources.data`` puts them so), so everything downstream learns the task names from the targets
alone: :func:`pairs` lines each task's logits up with its labels, in evaluation, the training
losses and pruning's importance alike. A recipe without ``model.tasks`` keeps plain tensor
targets and reads the model's first output, as before.

No heavy imports at module level: the recipe layer imports this for the names' rules.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # also an ONNX output name as it is
MAX_TASKS = 64


class TaskMismatch(ValueError):
    """A model's output does not hold a task its targets name (preflight turns this into exit 2)."""

    def __init__(self, task: str, got: str, expected: str) -> None:
        self.task, self.got, self.expected = task, got, expected
        super().__init__(f"the model's output has no task {task!r}: got {got}, expected {expected}")


def is_multi(targets: Any) -> bool:
    """Targets of a recipe with ``model.tasks``: ``{task: labels}``."""
    return isinstance(targets, Mapping)


def batch_size(targets: Any) -> int:
    """Samples in a batch of targets (``len`` of a dict would count its tasks)."""
    if is_multi(targets):
        return len(next(iter(targets.values())))
    return len(targets)


def to_device(targets: Any, device) -> Any:
    if is_multi(targets):
        return {name: labels.to(device, non_blocking=True) for name, labels in targets.items()}
    return targets.to(device, non_blocking=True)


def chunk(targets: Any, parts: int) -> list[Any]:
    """``targets`` split along the batch into ``parts`` (data-parallel sharding)."""
    if not is_multi(targets):
        return list(targets.chunk(parts))
    columns = {name: labels.chunk(parts) for name, labels in targets.items()}
    return [{name: chunks[i] for name, chunks in columns.items()} for i in range(parts)]


def primary(output: Any) -> Tensor:
    """The one output of a single-task model: the tensor, or the first of a tuple or dict."""
    if isinstance(output, Mapping):
        return next(iter(output.values()))
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def by_name(output: Any, names: tuple[str, ...] | list[str]) -> dict[str, Tensor]:
    """``output`` as {task: logits} for ``names``: dict keys, tuple positions, or a lone tensor for
    one task. Raises TaskMismatch naming the first task the output does not hold."""
    names = list(names)
    if isinstance(output, Mapping):
        for name in names:
            if name not in output:
                raise TaskMismatch(name, f"a dict with keys {sorted(map(str, output))}",
                                   f"a key per task: {names}")
        return {name: output[name] for name in names}
    if isinstance(output, (tuple, list)):
        if len(output) < len(names):
            raise TaskMismatch(names[len(output)], f"a {type(output).__name__} of {len(output)} outputs",
                               f"one output per task, in order: {names}")
        return dict(zip(names, output))
    if len(names) != 1:
        raise TaskMismatch(names[1], "a single tensor", f"a dict or tuple with one output per task: {names}")
    return {names[0]: output}


def pairs(output: Any, targets: Any) -> list[tuple[str, Tensor, Tensor]]:
    """(task, logits, labels) per task of ``targets``; one ("", first output, labels) without tasks."""
    if not is_multi(targets):
        return [("", primary(output), targets)]
    outputs = by_name(output, tuple(targets))
    return [(name, outputs[name], labels) for name, labels in targets.items()]


def ordered(output: Any, names: tuple[str, ...]) -> tuple[Tensor, ...]:
    """The outputs in ``names`` order (what the ONNX export names one by one)."""
    found = by_name(output, names)
    return tuple(found[name] for name in names)


def weighted_loss(output: Any, targets: Any, loss: Callable[[str, Tensor, Tensor], Tensor],
                  weights: Mapping[str, float] | None = None) -> Tensor:
    """Sum over tasks of weight × ``loss(task, logits, labels)`` (weight 1 unless ``weights`` says)."""
    weights = weights or {}
    terms = [weights.get(name, 1.0) * loss(name, logits, labels)
             for name, logits, labels in pairs(output, targets)]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def outputs_of(output: Any) -> list[Tensor]:
    """Every tensor a model returned, in order (a tensor, tuple or dict's values)."""
    if isinstance(output, Mapping):
        return list(output.values())
    if isinstance(output, (tuple, list)):
        return list(output)
    return [output]


def shapes(output: Any) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(t.shape) for t in outputs_of(output))


class TargetMismatch(ValueError):
    """A batch's targets do not fit ``model.tasks`` (preflight turns this into exit 2)."""

    def __init__(self, task: str, got: str, expected: str) -> None:
        self.task, self.got, self.expected = task, got, expected
        super().__init__(f"the dataset's targets have no task {task!r}: got {got}, expected {expected}")


def named_targets(labels: Any, names: tuple[str, ...]) -> dict[str, Tensor]:
    """A batch's targets as {task: labels} in ``names`` order (keys beyond ``names`` dropped); plain
    labels fit a single task. Raises TargetMismatch naming the first task they lack."""
    import torch

    if is_multi(labels):
        for name in names:
            if name not in labels:
                raise TargetMismatch(name, f"targets with keys {sorted(map(str, labels))}",
                                     f"a key per task of model.tasks: {list(names)}")
        return {name: torch.as_tensor(labels[name]) for name in names}
    if len(names) != 1:
        raise TargetMismatch(names[0], "one integer label per image",
                             f"{{task: int}} targets with the tasks {list(names)}")
    return {names[0]: torch.as_tensor(labels)}
