"""Top-1 accuracy of a torch module or an ONNX classifier (conventions: modelzip.evaluation)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelzip import tasks
from modelzip.evaluation.runtime import module_device, ort_session

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime
    from torch import Tensor, nn

Progress = Callable[[int], None]

def torch_accuracy(
    module: nn.Module,
    batches: Iterable[tuple[Tensor, Any]],
    *,
    progress: Progress | None = None,
) -> float:
    """Top-1 accuracy of ``module`` over ``batches`` of (inputs, labels); with ``{task: labels}``
    targets (modelzip.tasks), the mean over the tasks.

    Runs in eval mode under no_grad and restores the module's training mode
    afterwards. ``progress`` is called with the number of samples in each batch.
    """
    return torch_task_accuracies(module, batches, progress=progress).mean


def torch_task_accuracies(
    module: nn.Module,
    batches: Iterable[tuple[Tensor, Any]],
    *,
    progress: Progress | None = None,
) -> TaskAccuracies:
    """Top-1 accuracy per task of ``module`` (one task named "" for plain tensor labels)."""
    import torch

    device = module_device(module)
    was_training = module.training
    module.eval()
    tally = _Tally()
    try:
        with torch.no_grad():
            for inputs, labels in batches:
                output = module(inputs.to(device))
                for name, logits, target in tasks.pairs(output, labels):
                    tally.add(name, logits.argmax(dim=-1).cpu().numpy(), target.cpu().numpy())
                if progress is not None:
                    progress(tasks.batch_size(labels))
    finally:
        module.train(was_training)
    return tally.result()


def onnx_accuracy(
    path: Path,
    batches: Iterable[tuple[Tensor, Any]],
    *,
    threads: int | None = None,
    progress: Progress | None = None,
) -> float:
    """Top-1 accuracy of an ONNX classifier (single input; logits = first output, or the output
    named after each task for ``{task: labels}`` targets: the mean over the tasks)."""
    return onnx_task_accuracies(path, batches, threads=threads, progress=progress).mean


def onnx_task_accuracies(
    path: Path,
    batches: Iterable[tuple[Tensor, Any]],
    *,
    threads: int | None = None,
    progress: Progress | None = None,
) -> TaskAccuracies:
    """Top-1 accuracy per task of an ONNX model: the output named after a task, else the outputs
    in order (the export names them after the tasks; modelzip.onnx_export)."""
    import numpy as np

    session = ort_session(path, threads=threads)
    input_name = _single_input_name(session, path)
    output_names = [o.name for o in session.get_outputs()]
    tally = _Tally()
    for inputs, labels in batches:
        values = session.run(None, {input_name: inputs.detach().cpu().numpy()})
        named = dict(zip(output_names, values))
        output = named if tasks.is_multi(labels) and set(labels) <= named.keys() else values
        for name, logits, target in tasks.pairs(output, labels):
            tally.add(name, np.argmax(logits, axis=-1), target.cpu().numpy())
        if progress is not None:
            progress(tasks.batch_size(labels))
    return tally.result()


def onnx_outputs(path: Path, x: np.ndarray, *, threads: int | None = None) -> np.ndarray:
    """The first output of the ONNX model at ``path`` for input ``x``."""
    return next(iter(onnx_all_outputs(path, x, threads=threads).values()))


def onnx_all_outputs(path: Path, x: np.ndarray, *, threads: int | None = None) -> dict[str, np.ndarray]:
    """Every output of the ONNX model at ``path`` for input ``x``, by output name."""
    session = ort_session(path, threads=threads)
    values = session.run(None, {_single_input_name(session, path): x})
    return dict(zip((o.name for o in session.get_outputs()), values))


def _single_input_name(session: onnxruntime.InferenceSession, path: Path) -> str:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise ValueError(f"{path}: expected an ONNX model with one input, got {len(inputs)}: {names}")
    return inputs[0].name


@dataclass(frozen=True)
class TaskAccuracies:
    """Top-1 accuracy per task ("" alone for a single-task model) and the samples counted."""

    by_task: dict[str, float]
    samples: int

    @property
    def mean(self) -> float:
        """The single task's accuracy, or the unweighted mean over the tasks."""
        return sum(self.by_task.values()) / len(self.by_task)

    @property
    def named(self) -> dict[str, float]:
        """The per-task accuracies of a multi-task model; {} for a single-task one."""
        return {} if "" in self.by_task else dict(self.by_task)


class _Tally:
    def __init__(self) -> None:
        self.correct: dict[str, int] = {}
        self.total: dict[str, int] = {}

    def add(self, task: str, predicted, labels) -> None:
        self.correct[task] = self.correct.get(task, 0) + int((predicted == labels).sum())
        self.total[task] = self.total.get(task, 0) + len(labels)

    def result(self) -> TaskAccuracies:
        if not self.total:
            raise ValueError("cannot compute accuracy: the data yielded no samples")
        return TaskAccuracies({t: _ratio(self.correct[t], n) for t, n in self.total.items()},
                              max(self.total.values()))


def _ratio(correct: int, total: int) -> float:
    if total == 0:
        raise ValueError("cannot compute accuracy: the data yielded no samples")
    return correct / total
