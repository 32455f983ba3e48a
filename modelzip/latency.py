"""onnxruntime CPU latency, with the compared models interleaved so machine drift cancels."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime

# A latency measurement of one model aims to take at most this long; big batches
# get fewer repeats (but never fewer than MIN_TIMED_RUNS) so a report over a
# few models at batch 256 stays in seconds, not minutes.
LATENCY_BUDGET_S = 3.0
MIN_TIMED_RUNS = 5
WARMUP_BUDGET_S = 1.0




@dataclass(frozen=True)
class Latency:
    """onnxruntime wall time of one ``session.run`` at ``batch`` samples."""

    batch: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    threads: int


def measure_latency(
    paths: Mapping[str, Path],
    input_shape: tuple[int, ...],
    batch: int,
    *,
    threads: int | None = None,
    warmup: int = 10,
    repeats: int = 50,
    seed: int = 0,
) -> dict[str, Latency]:
    """Latency of each ONNX model in ``paths`` at ``batch``, measured interleaved.

    How: every model gets the same input, random normal of shape
    (batch, *input_shape[1:]) from a seeded generator. After ``warmup`` untimed
    runs of each model (at least one, since the first run allocates; fewer, but
    at least two, if they pass about WARMUP_BUDGET_S per model), models are timed
    round-robin -- one run of each per round, the starting model rotating each
    round -- so that drift of the machine (frequency scaling, a noisy neighbour)
    hits all models alike instead of whichever was measured last. Each model
    gets the same number of timed runs: ``repeats``, capped so that one model's
    runs take about LATENCY_BUDGET_S (3 s) judged from its slowest warm-up
    estimate, but never below MIN_TIMED_RUNS (5) unless ``repeats`` is smaller.
    """
    from modelzip.evaluation import default_threads, ort_session

    _check_latency_args(batch, warmup, repeats)
    threads = threads or default_threads()
    sessions = {name: ort_session(path, threads=threads) for name, path in paths.items()}
    feeds = {name: _random_feed(session, input_shape, batch, seed) for name, session in sessions.items()}
    estimate_ns = _warm_up(sessions, feeds, max(warmup, 1))
    runs = _timed_runs(repeats, max(estimate_ns.values(), default=0))
    times_ns = _time_round_robin(sessions, feeds, runs)
    return {name: _summarise(times, batch, threads) for name, times in times_ns.items()}


def _check_latency_args(batch: int, warmup: int, repeats: int) -> None:
    if batch < 1 or warmup < 0 or repeats < 1:
        raise ValueError(f"need batch >= 1, warmup >= 0, repeats >= 1; got {batch=}, {warmup=}, {repeats=}")


def _random_feed(
    session: onnxruntime.InferenceSession, input_shape: tuple[int, ...], batch: int, seed: int
) -> dict[str, np.ndarray]:
    import numpy as np

    # Same seed for every model: they all see exactly the same numbers.
    generator = np.random.default_rng(seed)
    model_input = session.get_inputs()[0]
    data = generator.standard_normal((batch, *input_shape[1:]), dtype=np.float32)
    if model_input.type == "tensor(float16)":
        data = data.astype(np.float16)
    return {model_input.name: data}


def _warm_up(sessions: Mapping[str, Any], feeds: Mapping[str, dict], warmup: int) -> dict[str, int]:
    """Untimed rounds; return each model's last (warm) run time as the estimate.

    Stops early, after at least two rounds, once about WARMUP_BUDGET_S per model
    is spent: ten warm-ups of a 1-second batch-256 run would teach nothing.
    """
    last_ns: dict[str, int] = {}
    deadline_ns = time.perf_counter_ns() + int(WARMUP_BUDGET_S * 1e9) * len(sessions)
    for round_index in range(warmup):
        for name, session in sessions.items():
            start = time.perf_counter_ns()
            session.run(None, feeds[name])
            last_ns[name] = time.perf_counter_ns() - start
        if round_index >= 1 and time.perf_counter_ns() > deadline_ns:
            break
    return last_ns


def _timed_runs(repeats: int, slowest_run_ns: int) -> int:
    affordable = math.floor(LATENCY_BUDGET_S * 1e9 / max(slowest_run_ns, 1))
    return min(repeats, max(MIN_TIMED_RUNS, affordable))


def _time_round_robin(
    sessions: Mapping[str, Any], feeds: Mapping[str, dict], runs: int
) -> dict[str, list[int]]:
    names = list(sessions)
    times: dict[str, list[int]] = {name: [] for name in names}
    for round_index in range(runs):
        # Rotate who goes first so no model always runs right after the same other one.
        shift = round_index % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter_ns()
            sessions[name].run(None, feeds[name])
            times[name].append(time.perf_counter_ns() - start)
    return times


def _summarise(times_ns: list[int], batch: int, threads: int) -> Latency:
    ordered = sorted(times_ns)
    return Latency(
        batch=batch,
        median_ms=statistics.median(ordered) / 1e6,
        p90_ms=_percentile(ordered, 0.9) / 1e6,
        mean_ms=statistics.fmean(ordered) / 1e6,
        runs=len(ordered),
        threads=threads,
    )


def _percentile(ordered: list[int], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

