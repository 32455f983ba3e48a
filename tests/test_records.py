"""The typed measurement records: JSON round trips (the step cache stores their JSON) and the one
place the ``batch_<n>`` keys are written and read."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelzip.evaluation.latency import FASTER, SAME_MODEL
from modelzip.evaluation.records import GateResult, LatencyPair, LatencyResult, Metrics, Ratios, StepRecord, Timing

GOLDEN = Path(__file__).parent / "golden" / "report_tiny.json"


def _pair(batch: int, ratio: float, verdict: str) -> LatencyPair:
    timing = Timing(batch, 0.1, 0.12, 0.11, 200, 2)
    return LatencyPair(batch, timing, Timing(batch, round(0.1 / ratio, 4), 0.1, 0.1, 200, 2), ratio,
                       ratio - 0.05, ratio + 0.05, 200, verdict)


def test_metrics_round_trip_and_torch_metrics_have_no_zip_bytes() -> None:
    onnx = Metrics(0.91, "onnxruntime", 128, 1484, 1400, 282496, 9155, 6785)
    torch_metrics = Metrics(0.91, "torch", 128, 1532, 1508, 282496, 11385)
    assert Metrics.from_json(json.loads(json.dumps(onnx.to_json()))) == onnx
    assert "zip_bytes" not in torch_metrics.to_json()
    assert Metrics.from_json(torch_metrics.to_json()) == torch_metrics


def test_latency_result_round_trips_through_the_cache_shape() -> None:
    result = LatencyResult((_pair(1, 1.0, SAME_MODEL), _pair(256, 1.3, FASTER)), cached=False)
    stored = json.loads(json.dumps(result.to_json(with_cached=False)))
    assert list(stored) == ["batch_1", "batch_256"]  # the cache holds no "cached" flag
    assert LatencyResult.from_json(stored, cached=True) == LatencyResult(result.pairs, cached=True)
    assert list(result.to_json()) == ["batch_1", "batch_256", "cached"]  # report.json's order
    assert LatencyResult.from_json(result.to_json()) == result
    assert result.at(256).ratio == 1.3 and result.at(64) is None and result.at(1).same_model


def test_batches_are_read_in_numeric_order() -> None:
    result = LatencyResult((_pair(1, 1.0, SAME_MODEL), _pair(64, 1.1, FASTER), _pair(256, 1.3, FASTER)))
    shuffled = {k: result.to_json()[k] for k in ("batch_256", "cached", "batch_64", "batch_1")}
    assert [p.batch for p in LatencyResult.from_json(shuffled).pairs] == [1, 64, 256]


def test_golden_report_latency_and_metrics_parse_back() -> None:
    final = json.loads(GOLDEN.read_text())["final"]
    latency = LatencyResult.from_json(final["latency"])
    assert [p.batch for p in latency.pairs] == [1, 64]
    assert Metrics.from_json(final).size_bytes == final["size_bytes"]


def test_ratios_json_has_speedups_only_with_latency() -> None:
    ratios = Ratios(2.0, 1.5, -0.01, 0.0)
    assert ratios.to_json() == {"size": 2.0, "zip_size": 1.5, "accuracy_delta": -0.01, "accuracy_delta_vs_onnx": 0.0}
    assert ratios.accuracy_drop == pytest.approx(0.01)
    assert Ratios(1.0, 1.0, 0.0, 0.0).accuracy_drop == 0.0 and str(Ratios(1.0, 1.0, 0.0, 0.0).accuracy_drop) == "0.0"
    with_latency = Ratios(1.0, 1.0, 0.0, 0.0, speedups=((1, 1.1), (64, 1.2)), speedup=1.2)
    assert list(with_latency.to_json())[-3:] == ["speedup_batch_1", "speedup_batch_64", "speedup"]


def test_step_record_marks_only_implicit_steps() -> None:
    metrics = Metrics(0.5, "onnxruntime", 8, 10, 10, 100, 50, 40)
    step = StepRecord(0, "export", {}, "k", False, "onnx", 1.0, {}, metrics)
    assert "implicit" not in step.to_json() and step.to_json()["pass"] == "export"
    from dataclasses import replace

    assert replace(step, implicit=True).to_json()["implicit"] is True


def test_gate_result_formats_and_serializes() -> None:
    gate = GateResult("min_speedup", False, None, ">= 1.2")
    assert gate.format() == "min_speedup: got n/a, expected >= 1.2"
    assert gate.to_json() == {"name": "min_speedup", "passed": False, "got": None, "expected": ">= 1.2"}


def test_final_and_ratios_round_trip_through_report_json() -> None:
    """`modelzip compare` reads report.json's final back into the record that wrote it."""
    from modelzip.evaluation.records import Final

    final = Final("model.onnx", "abc", Metrics(0.9, "onnxruntime", 128, 10, 9, 100, 2000, 1500),
                  ({"pass": "export"},), 4000, 3000,
                  LatencyResult((_pair(1, 1.0, SAME_MODEL), _pair(64, 1.3, FASTER))), 2,
                  Ratios(2.0, 2.0, -0.01, 0.0, speedups=((1, 1.0), (64, 1.3)), speedup=1.3))
    assert Final.from_json(json.loads(json.dumps(final.to_json()))) == final
    no_latency = Ratios(2.0, 1.5, 0.0, 0.0)
    assert Ratios.from_json(no_latency.to_json()) == no_latency
    golden = json.loads(GOLDEN.read_text())["final"]
    golden["threads"] = 2
    assert Final.from_json(golden).ratios.speedups == ((1, 1.0), (64, 1.0))
