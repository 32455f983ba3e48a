"""The onnxruntime CPU session all measurements use, and the thread count they default to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnxruntime
    from torch import nn


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


def module_device(module: nn.Module) -> Any:
    """Where the module's first parameter (else buffer) lives; cpu for a module with neither."""
    import torch

    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
