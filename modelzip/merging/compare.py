"""The student against the sum of its teachers: parameters, MACs, ONNX bytes and latency.

Latency: the teachers, each exported to ONNX, run one after the other on the same input (what
serving the tasks with separate models costs) as one session, timed interleaved with the
student's session by modelzip.evaluation's machinery (same threads, same input, the speedup's
bootstrap interval and its faster/SLOWER verdict).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelzip.evaluation import runtime
from modelzip.evaluation.latency import compare_sessions
from modelzip.evaluation.torch_stats import count_params, torch_macs


@dataclass(frozen=True)
class Footprint:
    """What one model (or a set of them, summed) holds and costs per sample."""

    params: int
    macs: int
    onnx_bytes: int  # the fp32 ONNX file

    def __add__(self, other: Footprint) -> Footprint:
        return Footprint(self.params + other.params, self.macs + other.macs, self.onnx_bytes + other.onnx_bytes)

    def to_json(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs, "onnx_bytes": self.onnx_bytes}


def footprint(module, input_shape: tuple[int, ...], onnx_path: Path) -> Footprint:
    return Footprint(count_params(module)[0], torch_macs(module, input_shape), Path(onnx_path).stat().st_size)


def total(footprints: Sequence[Footprint]) -> Footprint:
    result = Footprint(0, 0, 0)
    for item in footprints:
        result = result + item
    return result


class SessionChain:
    """Several onnxruntime sessions that look like one (``get_inputs``, ``run``): ``run`` feeds the
    same input to each in turn and returns all their outputs."""

    def __init__(self, sessions: Sequence[Any]) -> None:
        self.sessions = list(sessions)

    def get_inputs(self) -> list[Any]:
        return self.sessions[0].get_inputs()

    def run(self, output_names: Any, feed: dict[str, Any]) -> list[Any]:
        (value,) = feed.values()
        outputs: list[Any] = []
        for session in self.sessions:
            outputs += session.run(output_names, {session.get_inputs()[0].name: value})
        return outputs


@dataclass(frozen=True)
class LatencyTiming:
    """ONNX Runtime timing of the teachers (one after the other) against the student, at ``batch``."""

    batch: int
    teachers_ms: float  # median of one run of every teacher
    student_ms: float
    speedup: float  # teachers / student: > 1, the student is faster
    ci_low: float
    ci_high: float
    verdict: str  # latency.VERDICTS: "faster" only when the whole interval is beyond 3%
    threads: int

    def to_json(self) -> dict[str, Any]:
        return {"batch": self.batch, "teachers_ms": round(self.teachers_ms, 4), "student_ms": round(self.student_ms, 4),
                "speedup": round(self.speedup, 3), "ci95": [round(self.ci_low, 3), round(self.ci_high, 3)],
                "verdict": self.verdict, "threads": self.threads}


def time_against_teachers(student: Path, teachers: Sequence[Path], input_shape: tuple[int, ...], batch: int, *,
                          threads: int | None = None, warmup: int = 10, repeats: int = 50, seed: int = 0,
                          tolerance: float = 0.0) -> LatencyTiming:
    """The student's ONNX file against the teachers' files run in turn, interleaved at ``batch``."""
    threads = threads or runtime.default_threads()
    opener: Callable[[Path], Any] = lambda path: runtime.ort_session(path, threads=threads)  # noqa: E731
    base, final, comparison = compare_sessions(
        lambda: SessionChain([opener(path) for path in teachers]), lambda: opener(student), input_shape, batch,
        threads=threads, warmup=warmup, repeats=repeats, seed=seed, tolerance=tolerance)
    return LatencyTiming(batch, base.median_ms, final.median_ms, comparison.ratio, comparison.ci_low,
                         comparison.ci_high, comparison.verdict, threads)
