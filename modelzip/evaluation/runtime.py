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


# Session settings every measurement uses beyond the defaults; part of the cache key of anything timed
# (modelzip.inputs.timing_fingerprint, Measurer.latency). An idle onnxruntime worker thread spins
# before it sleeps, by default for long enough that the sessions of an interleaved comparison (two
# models, three sessions each) kept taking the cores from whichever session ran: on the fashion CNN
# (2 cores, onnxruntime 1.32) the fp32 file ran 24-28 ms at batch 256 interleaved against 12.4 ms
# alone, and the int8 speedup read 1.56-1.81x where each file timed alone gave 2.1-2.3x; at batch 1
# it read 1.93-1.95x against 1.58-1.66x alone. With idle threads spinning at most 1 ms (and the
# wait before each turn, SETTLE_S), the interleaved ratios at batch 256 match the lone ones (2.07-
# 2.23x). At batch 1 they match a lone session with the same bound, but that session sometimes
# paid a thread wake-up per run (0.11 ms where the default took 0.074 ms on one probe, 0.074 on
# another), so batch-1 latencies can read up to 1.5x high and int8's batch-1 gain low (1.35-1.40x
# against 1.61x), where the default read it high. Spinning off paid that wake-up always.
# Reproduce with scripts/probe_spinning.py (BENCHMARKS.md "Thread spinning and interleaved timing").
# Measured with onnxruntime 1.32; a version that does not know the key ignores it and times as before.
SPIN_LIMIT_US = 1000
MEASUREMENT_SESSION_CONFIG = {"session.intra_op.spin_duration_us": str(SPIN_LIMIT_US)}
# Interleaved timing waits this long before each model's turn, so that the previous session's
# threads have stopped spinning and the timed run has the cores (latency._time_round_robin). With
# the bound alone, a 5 ms run still shared its first millisecond: ten artifacts timed together at
# batch 256 gave the pruned int8 CNN 3.16x where a pair of sessions gave 3.94x; waiting 1.5 ms
# first, 4.01x (same round, quiet machine).
SETTLE_S = SPIN_LIMIT_US / 1e6 + 0.0005
# How timed sessions are set up and taken in turns: part of every timing cache key (anything timed
# with another method is timed again).
TIMING_METHOD = {"session_config": MEASUREMENT_SESSION_CONFIG, "settle_s": SETTLE_S}


def ort_session(path: Path, *, threads: int | None = None) -> onnxruntime.InferenceSession:
    """A CPU onnxruntime session set up the way all measurements in modelzip use it.

    One inter-op thread and sequential execution: our graphs are chains, and a
    second pool would only add scheduling noise to latency numbers. Idle threads
    spin briefly (MEASUREMENT_SESSION_CONFIG), so sessions timed in turns do not
    slow each other down.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer
    for key, value in MEASUREMENT_SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def module_device(module: nn.Module) -> Any:
    """Where the module's first parameter (else buffer) lives; cpu for a module with neither."""
    import torch

    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
