"""Top-1 accuracy of a torch module or an ONNX classifier (conventions: modelzip.evaluation)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from modelzip.evaluation.runtime import module_device, ort_session

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime
    from torch import Tensor, nn

Progress = Callable[[int], None]

def torch_accuracy(
    module: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    progress: Progress | None = None,
) -> float:
    """Top-1 accuracy of ``module`` over ``batches`` of (inputs, labels).

    Runs in eval mode under no_grad and restores the module's training mode
    afterwards. ``progress`` is called with the number of samples in each batch.
    """
    import torch

    device = module_device(module)
    was_training = module.training
    module.eval()
    correct = total = 0
    try:
        with torch.no_grad():
            for inputs, labels in batches:
                logits = module(inputs.to(device))
                predicted = logits.argmax(dim=-1).cpu()
                correct += int((predicted == labels.cpu()).sum())
                total += len(labels)
                if progress is not None:
                    progress(len(labels))
    finally:
        module.train(was_training)
    return _ratio(correct, total)


def onnx_accuracy(
    path: Path,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    threads: int | None = None,
    progress: Progress | None = None,
) -> float:
    """Top-1 accuracy of an ONNX classifier (single input; logits = first output)."""
    import numpy as np

    session = ort_session(path, threads=threads)
    input_name = _single_input_name(session, path)
    correct = total = 0
    for inputs, labels in batches:
        logits = session.run(None, {input_name: inputs.detach().cpu().numpy()})[0]
        correct += int((np.argmax(logits, axis=-1) == labels.cpu().numpy()).sum())
        total += len(labels)
        if progress is not None:
            progress(len(labels))
    return _ratio(correct, total)


def onnx_outputs(path: Path, x: np.ndarray, *, threads: int | None = None) -> np.ndarray:
    """The first output of the ONNX model at ``path`` for input ``x``."""
    session = ort_session(path, threads=threads)
    return session.run(None, {_single_input_name(session, path): x})[0]


def _single_input_name(session: onnxruntime.InferenceSession, path: Path) -> str:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise ValueError(f"{path}: expected an ONNX model with one input, got {len(inputs)}: {names}")
    return inputs[0].name


def _ratio(correct: int, total: int) -> float:
    if total == 0:
        raise ValueError("cannot compute accuracy: the data yielded no samples")
    return correct / total
