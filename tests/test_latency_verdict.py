"""Latency verdicts: the bootstrap interval on synthetic samples, the same-model shortcut, an A/A run
that really measures, and what the reports print."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelzip.evaluation import runtime
from modelzip.evaluation.latency import (
    EQUIVALENCE_MARGIN,
    FASTER,
    SAME_MODEL,
    SLOWER,
    WITHIN_NOISE,
    Latency,
    compare_latency,
    compare_times,
    latency_verdict,
    same_file,
)

MS = 1_000_000  # ns


def lognormal_ns(median_ms: float, spread: float, n: int, seed: int) -> np.ndarray:
    """Run times as they look: a median, multiplicative noise, a long right tail."""
    return median_ms * MS * np.random.default_rng(seed).lognormal(0.0, spread, n)


# ---------------------------------------------------------------- the statistics on synthetic samples


def test_clearly_faster() -> None:
    result = compare_times(lognormal_ns(10, 0.05, 60, 1), lognormal_ns(8, 0.05, 60, 2))
    assert result.verdict == FASTER and result.pairs == 60
    assert result.ratio == pytest.approx(1.25, rel=0.03)
    assert EQUIVALENCE_MARGIN < result.ci_low <= result.ratio <= result.ci_high < 1.35


def test_clearly_slower() -> None:
    result = compare_times(lognormal_ns(8, 0.05, 60, 1), lognormal_ns(10, 0.05, 60, 2))
    assert result.verdict == SLOWER
    assert result.ci_low <= result.ratio <= result.ci_high < 1 / EQUIVALENCE_MARGIN


def test_identical_samples_are_within_noise() -> None:
    times = lognormal_ns(5, 0.1, 50, 3)
    result = compare_times(times, times.copy())
    assert (result.ratio, result.ci_low, result.ci_high, result.verdict) == (1.0, 1.0, 1.0, WITHIN_NOISE)


@pytest.mark.parametrize("seed", range(5))
def test_same_distribution_is_within_noise(seed: int) -> None:
    result = compare_times(lognormal_ns(5, 0.1, 200, seed), lognormal_ns(5, 0.1, 200, seed + 100))
    assert result.verdict == WITHIN_NOISE and result.ci_low <= 1.0 <= result.ci_high


def test_noisy_overlapping_samples_are_within_noise() -> None:
    # A 10% difference buried in 40% run-to-run noise and only 8 rounds: the interval is wide.
    result = compare_times(lognormal_ns(11, 0.4, 8, 4), lognormal_ns(10, 0.4, 8, 5))
    assert result.verdict == WITHIN_NOISE
    assert result.ci_low < 1.0 < result.ci_high


def test_a_real_but_tiny_difference_is_inside_the_margin() -> None:
    # 1% faster, measured very precisely: the interval excludes 1 but lies inside the margin.
    final = lognormal_ns(10, 0.005, 200, 6)
    result = compare_times(final * 1.01, final)
    assert 1.0 < result.ci_low and result.ci_high < EQUIVALENCE_MARGIN and result.verdict == WITHIN_NOISE


def test_scheduler_stretches_widen_the_interval() -> None:
    """What A/A runs at batch 1 showed: stretches of ~20 rounds in which one copy gets the second
    core (0.075 ms) and the other does not (0.12 ms). With 6 of 10 stretches favouring the final
    copy, its median is 0.075 ms: a "1.6x" that resampling single rounds would call certain."""
    favours_final = [True, False, True, True, False, True, False, True, False, True]
    fast, slow = 0.075 * MS, 0.12 * MS
    baseline = np.repeat([slow if f else fast for f in favours_final], 20)
    final = np.repeat([fast if f else slow for f in favours_final], 20)
    result = compare_times(baseline, final)
    assert result.ratio == pytest.approx(1.6)
    assert result.ci_low < 1.0 < result.ci_high and result.verdict == WITHIN_NOISE


def test_bootstrap_is_seeded() -> None:
    baseline, final = lognormal_ns(10, 0.2, 40, 7), lognormal_ns(9.5, 0.2, 40, 8)
    assert compare_times(baseline, final, seed=3) == compare_times(baseline, final, seed=3)


def test_verdict_needs_the_whole_interval_beyond_the_margin() -> None:
    assert latency_verdict(1.05, 1.3, margin=1.03) == FASTER
    assert latency_verdict(1.02, 1.3, margin=1.03) == WITHIN_NOISE
    assert latency_verdict(0.7, 0.95, margin=1.03) == SLOWER
    assert latency_verdict(0.7, 0.98, margin=1.03) == WITHIN_NOISE


def test_compare_times_rejects_unpaired_series() -> None:
    with pytest.raises(ValueError, match="paired"):
        compare_times([1, 2, 3], [1, 2])


# ---------------------------------------------------------------- tiny ONNX models, byte-identical or not


def mlp_onnx(path: Path, doc_string: str = "") -> Path:
    """784 -> 128 -> 10 MatMul/Relu with seeded weights: a model small enough to time in milliseconds."""
    generator = np.random.default_rng(0)
    w1 = numpy_helper.from_array(generator.standard_normal((784, 128), dtype=np.float32), "w1")
    w2 = numpy_helper.from_array(generator.standard_normal((128, 10), dtype=np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["logits"])],
        "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 784])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], doc_string=doc_string)
    onnx.save(model, path)
    return path


def test_same_file_compares_bytes(tmp_path: Path) -> None:
    first = mlp_onnx(tmp_path / "a.onnx")
    (tmp_path / "copy.onnx").write_bytes(first.read_bytes())
    other = mlp_onnx(tmp_path / "b.onnx", doc_string="x")  # same graph, different bytes
    flipped = tmp_path / "flipped.onnx"
    data = bytearray(first.read_bytes())
    data[-1] ^= 1
    flipped.write_bytes(data)  # same size, different bytes
    assert same_file(first, first) and same_file(first, tmp_path / "copy.onnx")
    assert not same_file(first, other) and not same_file(first, flipped)


def test_a_byte_identical_final_is_the_same_model_measured_once(tmp_path: Path, monkeypatch) -> None:
    baseline = mlp_onnx(tmp_path / "baseline.onnx")
    final = tmp_path / "final.onnx"
    final.write_bytes(baseline.read_bytes())
    opened: list[Path] = []
    real_session = runtime.ort_session

    def counting_session(path, threads):
        opened.append(Path(path))
        return real_session(path, threads=threads)

    monkeypatch.setattr(runtime, "ort_session", counting_session)
    base, fin, comparison = compare_latency(baseline, final, (1, 784), 4, threads=1, warmup=1, repeats=5)
    assert opened == [final]  # one session, one series of timed runs
    assert base is fin and fin.runs == 5
    assert (comparison.ratio, comparison.ci_low, comparison.ci_high) == (1.0, 1.0, 1.0)
    assert (comparison.pairs, comparison.verdict) == (0, SAME_MODEL)


def test_a_a_copies_are_within_noise(tmp_path: Path) -> None:
    """Two byte-different files of one model, really measured as the pipeline does (batch 1, 200
    rounds; batch 64, capped at the budget): never faster or SLOWER. A second or two of runs."""
    first, second = mlp_onnx(tmp_path / "a.onnx"), mlp_onnx(tmp_path / "b.onnx", doc_string="A/A copy")
    assert not same_file(first, second)
    for batch in (1, 64):
        base, fin, comparison = compare_latency(first, second, (1, 784), batch, warmup=10, repeats=200)
        assert comparison.verdict == WITHIN_NOISE, (batch, comparison, base.median_ms, fin.median_ms)
        assert comparison.pairs == base.runs == fin.runs and len(base.times_ns) == base.runs


# ---------------------------------------------------------------- what the reports say


def _pair(ratio: float, ci_low: float, ci_high: float, verdict: str, pairs: int = 200) -> dict:
    timing = {"batch": 1, "median_ms": 0.1, "p90_ms": 0.12, "mean_ms": 0.11, "runs": 200, "threads": 2}
    return {"baseline": timing, "final": {**timing, "median_ms": 0.1 / ratio}, "ratio": ratio,
            "ci_low": ci_low, "ci_high": ci_high, "pairs": pairs, "verdict": verdict}


def test_latency_rows_show_the_interval_and_the_same_model() -> None:
    from modelzip.report import LATENCY_HEADER, latency_rows

    latency_record = {"cached": False, "batch_1": _pair(1.0, 1.0, 1.0, SAME_MODEL, pairs=0),
                      "batch_256": _pair(1.1234, 1.05, 1.2, FASTER)}
    rows = latency_rows({"final": {"latency": latency_record}})
    assert all(len(row) == len(LATENCY_HEADER) for row in rows)
    assert rows[0][1] == "same file as the final model"
    assert rows[0][3] == "1.00x same model (byte-identical, measured once)"
    assert rows[1][3] == "1.12x (1.05-1.20) faster" and rows[1][4] == "200"


def test_speedup_ratios_and_gate_read_the_point_estimate() -> None:
    from modelzip.evaluation.records import Baseline, LatencyResult, Metrics, Ratios
    from modelzip.gates import check_gates
    from modelzip.recipe import Gates

    latency_record = LatencyResult.from_json({"cached": False, "batch_1": _pair(1.0, 1.0, 1.0, SAME_MODEL, 0),
                                              "batch_256": _pair(1.3, 1.2, 1.4, FASTER)})
    onnx = Metrics(0.9, "onnxruntime", 10, 100, 100, 1000, size_bytes=10, zip_bytes=8)
    final = Metrics(0.9, "onnxruntime", 10, 100, 50, 1000, size_bytes=5, zip_bytes=4)
    baseline = Baseline(torch=Metrics(0.9, "torch", 10, 100, 100, 1000, size_bytes=12), onnx=onnx, export={})
    out = Ratios.between(final, baseline, latency_record, 256)
    assert (out.size, out.zip_size) == (2.0, 2.0)
    assert out.to_json()["speedup_batch_1"] == 1.0
    assert out.to_json()["speedup_batch_256"] == out.speedup == 1.3
    json.dumps(out.to_json())
    record = SimpleNamespace(ratios=out, metrics=final)
    (gate,) = check_gates(Gates(min_speedup=1.25), record)
    assert gate.passed and gate.got == 1.3  # the point estimate, though the interval reaches down to 1.2


def test_quantize_summary_uses_the_same_verdict() -> None:
    from modelzip.evaluation.records import LatencyPair, LatencyResult
    from modelzip.quantization.summary import float_is_faster

    def record(float_ms: float, quantized_ms: float) -> LatencyResult:
        """float (baseline) and quantized (final) runs with +-1% noise, compared by compare_times."""
        noise = [0.99, 1.0, 1.01, 1.0] * 10

        def latency(ms: float) -> Latency:
            return Latency(64, ms, ms, ms, len(noise), 1, times_ns=tuple(int(ms * 1e6 * n) for n in noise))
        baseline, final = latency(float_ms), latency(quantized_ms)
        comparison = compare_times(baseline.times_ns, final.times_ns)
        return LatencyResult((LatencyPair.of(64, baseline, final, comparison),))

    assert float_is_faster(record(1.0, 2.0), 64)  # int8 twice as slow: SLOWER
    assert not float_is_faster(record(1.0, 1.01), 64)  # 1% slower: inside the margin, not SLOWER
    assert not float_is_faster(record(2.0, 1.0), 64)
    assert not float_is_faster(record(1.0, 2.0), 1) and not float_is_faster(None, 64)  # nothing measured


def test_pipeline_reports_an_unchanged_export_as_the_same_model(tiny_checkpoint, recipe_file) -> None:
    """The quickstart bug: export alone gave the baseline's bytes, and the report said 0.62x SLOWER."""
    from modelzip import load_recipe, run_recipe
    from tests.conftest import synthetic_recipe

    result = run_recipe(load_recipe(recipe_file(synthetic_recipe("  - export: {}", checkpoint="tiny.pt"))))
    final = result.report["final"]
    for batch in ("batch_1", "batch_64"):
        pair = final["latency"][batch]
        assert (pair["verdict"], pair["ratio"], pair["ci_low"], pair["ci_high"], pair["pairs"]) == \
            (SAME_MODEL, 1.0, 1.0, 1.0, 0)
        assert pair["baseline"] == pair["final"]
    assert final["ratios"]["speedup"] == 1.0
    markdown = (result.output_dir / "report.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith(("| batch 1 ", "| batch 64 "))]
    assert len(rows) == 2
    assert all("| 1.00x same model (byte-identical, measured once) |" in row for row in rows)
