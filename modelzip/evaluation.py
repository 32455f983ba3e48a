"""Measurements on torch modules and ONNX files: accuracy, size, MACs, latency.

Everything here *reads* an artifact and returns numbers; nothing here changes a
model (modules are put back in the train/eval mode they came in). Heavy
libraries (torch, onnx, onnxruntime) are imported inside the functions so that
importing this module stays cheap for the CLI's light paths.

Conventions the report relies on:

* MACs are multiply-accumulates for ONE sample (batch 1), counted only for
  Conv/ConvTranspose/Linear/MatMul-like ops: elementwise ops, pooling and
  normalisation are not counted. torch and ONNX counts of the same network agree.
* Parameter counts of an ONNX file count what the file stores (see
  `onnx_param_counts`), so they can differ from the torch module's: exporters
  fold BatchNorm into the conv before it (its weight and bias vanish), the
  legacy exporter stores identical tensors once (e.g. the all-zero biases of an
  untrained net), and 1-element initializers are not counted.
* Latency is onnxruntime on the CPU, models interleaved (see `measure_latency`).
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import onnxruntime
    from torch import Tensor, nn

OnnxSource = Union[Path, str, "onnx.ModelProto"]
Progress = Callable[[int], None]



# ---------------------------------------------------------------- accuracy


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

    device = _module_device(module)
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


def default_threads() -> int:
    """All cores this process may use (the affinity mask, else os.cpu_count())."""
    # In a container os.cpu_count() reports the host's cores; the affinity mask
    # is what the scheduler will actually give us.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def ort_session(path: Path, *, threads: int | None = None) -> onnxruntime.InferenceSession:
    """A CPU onnxruntime session set up the way all measurements in modelzip use it.

    One inter-op thread and sequential execution: our graphs are chains, and a
    second pool would only add scheduling noise to latency numbers.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


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


def _module_device(module: nn.Module) -> Any:
    import torch

    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _ratio(correct: int, total: int) -> float:
    if total == 0:
        raise ValueError("cannot compute accuracy: the data yielded no samples")
    return correct / total


# ---------------------------------------------------------------- size


def count_params(module: nn.Module) -> tuple[int, int]:
    """(total, nonzero) elements over the module's parameters (buffers excluded).

    A pruning mask applied with torch.nn.utils.prune lives in ``weight_orig`` +
    a buffer, so count after ``prune.remove`` to see the zeros.
    """
    total = nonzero = 0
    for parameter in module.parameters():
        total += parameter.numel()
        nonzero += int(parameter.detach().count_nonzero())
    return total, nonzero


def state_dict_bytes(module: nn.Module) -> int:
    """Bytes of ``torch.save(module.state_dict())``: the checkpoint a user would ship."""
    import torch

    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def zip_bytes(path: Path) -> int:
    """Size of the file after deflate at level 9 (zlib), i.e. its "zip-compressed size".

    This is how Deep Compression counts sparsity: zeros cost almost nothing once
    compressed, while the raw file keeps dense shapes. Only the named file is
    read: an ONNX model saved with external data needs its data file counted too.
    """
    compressor = zlib.compressobj(9)
    size = 0
    with open(path, "rb") as handle:
        # Streamed in chunks so a large model is not held in memory twice.
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            size += len(compressor.compress(chunk))
    return size + len(compressor.flush())


# ---------------------------------------------------------------- MACs (torch)


def torch_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on ONE sample of ``input_shape``.

    The batch dimension (input_shape[0]) is replaced by 1. Counted with
    torch.utils.flop_counter (convolutions, linear layers, matmuls, attention),
    MACs = FLOPs / 2. Runs in eval mode and restores the module's mode.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sample = torch.zeros((1, *input_shape[1:]), device=_module_device(module), dtype=_float_dtype(module))
    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    try:
        # Deliberately not under no_grad: in eval mode + no_grad, nn.Transformer
        # layers take a fused "fast path" kernel the flop counter does not know,
        # which would silently count their matmuls as zero.
        with counter:
            module(sample)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2


def _float_dtype(module: nn.Module) -> Any:
    import torch

    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32



# Re-exported so callers keep one import for measurements.
from modelzip.latency import Latency, measure_latency  # noqa: E402,F401
from modelzip.onnx_stats import onnx_macs, onnx_param_counts  # noqa: E402,F401
