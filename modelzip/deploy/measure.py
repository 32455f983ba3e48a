"""A deploy target measured in its own runtime, on the eval split, beside onnxruntime.

Accuracy and parity come from one pass over the eval split at data.batch_size: each batch runs
in the target and, in onnxruntime, in the ONNX file the target was converted from; parity is
the largest |difference| of every output (float targets) and the share of images whose top-1
class agrees (all targets). The first SINGLES images run again one at a time: converters have
shipped kernels right at batch 1 and wrong at batch > 1 (MNN#2377's fully-connected bug), so
parity holds only if both hold. Latency: the target against the final ONNX in onnxruntime, at
batch 1 and data.batch_size, interleaved (modelzip.evaluation.latency.compare_sessions).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelzip.evaluation.latency import compare_sessions
from modelzip.evaluation.records import LatencyPair
from modelzip.evaluation.runtime import ort_session

SINGLES = 100  # eval images also checked one at a time


@dataclass(frozen=True)
class LatencySettings:
    threads: int
    warmup: int
    repeats: int
    tolerance: float
    seed: int


def measure_target(open_target: Callable[[], Any], source_onnx: Path, final_onnx: Path,
                   batches: Callable[[int], Iterable[tuple[Any, Any]]], *, batch_size: int,
                   input_shape: tuple[int, ...], latency: LatencySettings | None) -> dict[str, Any]:
    """{"accuracy", "images", "parity": {"batch_1": ..., "batch_<N>": ...}, "latency": {"batch_<N>": pair}}."""
    target = open_target()
    source = ort_session(source_onnx, threads=latency.threads if latency else None)
    source_input = source.get_inputs()[0].name
    whole = _Parity()
    for images, labels in batches(batch_size):
        whole.add(target.predict(images), source.run(None, {source_input: images}), labels)
    singles = _Parity()
    for images, labels in _first_singles(batches(SINGLES)):
        singles.add(target.predict(images), source.run(None, {source_input: images}), labels)
    measured: dict[str, Any] = {"accuracy": whole.accuracy(), "images": whole.images,
                                "parity": {"batch_1": singles.to_json(), f"batch_{batch_size}": whole.to_json()}}
    if latency is not None:
        measured["latency"] = {f"batch_{batch}": _latency_pair(open_target, final_onnx, input_shape, batch, latency)
                               for batch in sorted({1, batch_size})}
    return measured


def _first_singles(batches: Iterable[tuple[Any, Any]]) -> Iterable[tuple[Any, Any]]:
    for images, labels in batches:
        for i in range(len(images)):
            yield images[i:i + 1], labels[i:i + 1]
        return


class _Parity:
    """Running totals: the largest |target - source| per output, top-1 agreement, correct labels."""

    def __init__(self) -> None:
        self.max_abs: list[float] = []
        self.agree = self.correct = self.images = 0

    def add(self, target: list, source: list, labels) -> None:
        import numpy as np

        if len(target) != len(source):
            raise ValueError(f"the target returned {len(target)} outputs, the ONNX model {len(source)}")
        diffs = [float(np.max(np.abs(np.asarray(t, np.float32).reshape(np.shape(s)) - s))) if np.size(s) else 0.0
                 for t, s in zip(target, source)]
        self.max_abs = [max(a, b) for a, b in zip(self.max_abs, diffs)] if self.max_abs else diffs
        predicted = np.argmax(np.asarray(target[0]).reshape(np.shape(source[0])), axis=-1)
        self.agree += int((predicted == np.argmax(source[0], axis=-1)).sum())
        self.correct += int((predicted == labels).sum())
        self.images += len(labels)

    def accuracy(self) -> float:
        if self.images == 0:
            raise ValueError("the eval split yielded no images")
        return self.correct / self.images

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "max_abs_diff": [round(d, 7) for d in self.max_abs],
                "agreement": round(self.agree / self.images, 5) if self.images else None}


def _latency_pair(open_target: Callable[[], Any], final_onnx: Path, input_shape: tuple[int, ...], batch: int,
                  settings: LatencySettings) -> dict[str, Any]:
    baseline, final, comparison = compare_sessions(
        lambda: ort_session(final_onnx, threads=settings.threads), open_target, input_shape, batch,
        threads=settings.threads, warmup=settings.warmup, repeats=settings.repeats, seed=settings.seed,
        tolerance=settings.tolerance)
    return LatencyPair.of(batch, baseline, final, comparison).to_json()
