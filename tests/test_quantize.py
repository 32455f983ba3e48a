"""The quantize pass: real int8/int4 ONNX that onnxruntime runs, honest node counts, exclusions,
the accuracy-aware search, latency honesty (prefer: faster), both pass orders, and config errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from modelzip import load_recipe, run_recipe
from modelzip.artifacts import Artifact
from modelzip.envinfo import cpu_flags
from modelzip.errors import PassError, RecipeError
from modelzip.evaluation.accuracy import onnx_outputs
from modelzip.evaluation.latency import Latency
from modelzip.passes.quantize import QuantizeConfig, QuantizePass
from modelzip.pipeline import RunOptions
from modelzip.quantization import choice, placement, sensitivity
from modelzip.recipe import DataSpec
from modelzip.registry import PassRegistry
from modelzip.sources.data import load_data
from modelzip.zoo import fashion_cnn
from tests.conftest import needs_fashion, pass_context, synthetic_recipe

# placement: auto (x86 only) pads the 1-channel stem's input to 4 channels channels-last with float nodes
# (Reshape, one-hot MatMul, Transpose: onnxruntime cancels the Transpose) and flattens the head in NHWC order.
PLACED = placement.applies(cpu_flags())
PAD = {"MatMul": 1, "Reshape": 1, "Transpose": 1} if PLACED else {}
RECIPE = synthetic_recipe("  - quantize: {}", name="quant", model="modelzip.zoo:fashion_cnn",
                          model_args="{num_classes: 4, width: 8}", val_samples=64)


@pytest.fixture(scope="module")
def registry() -> PassRegistry:
    return PassRegistry.from_entry_points()


@pytest.fixture(scope="module")
def data():
    return load_data(DataSpec(dataset="modelzip.testing:synthetic_dataset", args={"train": 256, "eval": 128},
                              batch_size=64, val_samples=64), base_dir=Path("."), seed=0)


def small_cnn() -> nn.Module:
    """The zoo CNN at width 8 (~205 k parameters): conv, BatchNorm, pooling, two Linear layers."""
    torch.manual_seed(0)
    return fashion_cnn(num_classes=4, width=8).eval()


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 4)).eval()


def run_pass(tmp_path, registry, data, module_or_path, **params):
    """Run the pass directly (no baseline/final measurement): (artifact, details, work_dir)."""
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(RECIPE)
    recipe = load_recipe(recipe_path, registry=registry)
    work = tmp_path / f"work{len(list(tmp_path.glob('work*')))}"
    work.mkdir()
    ctx = pass_context(recipe, data, pass_name="quantize", work_dir=work, build_module=small_cnn)
    if isinstance(module_or_path, Path):
        artifact = Artifact(kind="onnx", input_shape=(1, 1, 28, 28), id="in", path=module_or_path)
    else:
        artifact = Artifact(kind="torch", input_shape=(1, 1, 28, 28), id="in", module=module_or_path)
    produced = QuantizePass().run(artifact, QuantizeConfig(**params), ctx)
    return produced, ctx.details, work


def initializer_types(path: Path) -> dict[str, int]:
    return {init.name: init.data_type for init in onnx.load(str(path)).graph.initializer}


def op_types(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


# --------------------------------------------------------------------------- static


def test_static_writes_int8_weights_that_onnxruntime_runs(tmp_path, registry, data):
    produced, details, work = run_pass(tmp_path, registry, data, small_cnn())
    path = produced.path
    assert produced.kind == "onnx" and produced.module is None and path == work / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    types = initializer_types(path)
    # Weights are stored as int8 initializers, not fp32 behind a QuantizeLinear.
    for module in ("features.0", "features.4", "classifier.1", "classifier.4"):
        assert types[f"{module}.weight_quantized"] == onnx.TensorProto.INT8
        assert f"{module}.weight" not in types
    stored = details["nodes"]["initializer_bytes"]
    assert stored["int8"] > 20 * stored.get("float32", 0)
    assert details["size"]["ratio"] > 3.5
    assert path.stat().st_size * 3.5 < details["size"]["float_bytes"]
    logits = onnx_outputs(path, next(data.batches("eval"))[0].numpy())
    assert logits.shape == (64, 4) and np.isfinite(logits).all()
    nodes = details["nodes"]
    assert nodes["quantized_ops"]["Conv"] == 2 and nodes["quantized_ops"]["Gemm"] == 2
    assert nodes["conversion_ops"]["QuantizeLinear"] >= 4 and nodes["float_ops"] == PAD
    assert details["layers"]["quantized"] == ["features.0", "features.4", "classifier.1", "classifier.4"]
    # What onnxruntime runs: every QDQ group fused into an int8 kernel, Q/DQ only at the edges.
    assert nodes["as_run"]["int8"]["QLinearConv"] == 2 and nodes["as_run"]["int8"]["QGemm"] == 2
    assert "onnxruntime runs int8: " in details["summary"]
    assert nodes["as_run"]["conversions"] == {"DequantizeLinear": 1, "QuantizeLinear": 1}
    # Placed, the whole int8 graph runs channels last: no layout Transpose left at all.
    assert nodes["as_run"]["float"] == ({"MatMul": 1, "Reshape": 1} if PLACED else {})
    assert nodes["as_run"]["layout"] == ({} if PLACED else {"Transpose": 2})
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert metadata["modelzip.onnxruntime.graph_optimization_level"] == "ORT_ENABLE_ALL"
    arranged = details["settings"]["placement"]
    padded = [(row["input_channels"], row["padded_to"]) for row in arranged["padded_inputs"]]
    assert padded == ([(1, 4)] if PLACED else []) and len(arranged["nhwc_flatten"]) == PLACED
    assert ("placement: features.0 input padded 1 -> 4 channels, classifier.1 input flattened channels last"
            in details["summary"]) == PLACED
    settings = details["settings"]
    assert settings["per_channel"] and settings["calibration"] == {"method": "minmax", "samples": 256,
                                                                   "batch_size": 64}
    assert settings["reduce_range"] == choice.reduce_range(None)[0] and settings["reduce_range_reason"]
    assert details["latency"] is None  # timed only where prefer: faster chooses by it
    assert details["agreement_with_float"]["top1_agreement"] >= 0.9
    assert details["returned"] == "quantized" and "4/4 layers quantized" in details["summary"]
    assert (work / "calibration.json").is_file() and not (work / "scratch").exists()


def test_exclude_keeps_a_torch_module_float(tmp_path, registry, data):
    produced, details, _ = run_pass(tmp_path, registry, data, small_cnn(), exclude=("classifier.4",),
                                    method="percentile", percentile=99.99)
    types = initializer_types(produced.path)
    assert types["classifier.4.weight"] == onnx.TensorProto.FLOAT
    assert types["classifier.1.weight_quantized"] == onnx.TensorProto.INT8
    kept = details["layers"]["kept_float"]
    assert [(row["layer"], row["reason"]) for row in kept] == [("classifier.4", "exclude: 'classifier.4'")]
    assert details["exclude"] == {"classifier.4": ["classifier.4"]}
    assert details["nodes"]["float_ops"] == {"Gemm": 1, **PAD}


def test_exclude_pattern_matching_nothing_suggests_a_name(tmp_path, registry, data):
    with pytest.raises(PassError) as info:
        run_pass(tmp_path, registry, data, small_cnn(), exclude=("clasifier.4",))
    assert info.value.pass_name == "quantize" and info.value.got == "clasifier.4"
    assert "'classifier.4'" in info.value.fix


# --------------------------------------------------------------------------- dynamic, weight-only


def test_dynamic_quantizes_linear_layers(tmp_path, registry, data):
    produced, details, _ = run_pass(tmp_path, registry, data, small_mlp(), mode="dynamic")
    ops = op_types(produced.path)
    assert ops.count("MatMulInteger") == 2 and "DynamicQuantizeLinear" in ops
    assert details["layers"]["quantized"] == ["1", "3"]  # the MLP's Linear modules
    assert any(t == onnx.TensorProto.INT8 for t in initializer_types(produced.path).values())
    assert details["size"]["ratio"] > 3.5
    assert onnx_outputs(produced.path, np.zeros((3, 1, 28, 28), np.float32)).shape == (3, 4)


@pytest.mark.parametrize("bits, min_ratio", [(4, 5.0), (8, 3.0)])
def test_weight_only_packs_matmul_weights(tmp_path, registry, data, bits, min_ratio):
    produced, details, _ = run_pass(tmp_path, registry, data, small_mlp(), mode="weight_only",
                                    bits=bits, block_size=32)
    onnx.checker.check_model(str(produced.path), full_check=True)
    assert op_types(produced.path).count("MatMulNBits") == 2
    assert details["nodes"]["quantized_ops"] == {"MatMulNBits": 2}
    assert details["size"]["ratio"] > min_ratio
    assert details["agreement_with_float"]["top1_agreement"] >= 0.9


# --------------------------------------------------------------------------- accuracy-aware


def _fake_model(damage: dict[str, float]):
    """(quantize, evaluate) where each quantized layer costs a fixed amount of accuracy."""
    def quantize(float_layers):
        return Path("+".join(float_layers) or "all")

    def evaluate(path):
        kept = set(str(path).split("+"))
        return 0.9 - sum(cost for layer, cost in damage.items() if layer not in kept)
    return quantize, evaluate


DAMAGE = {"a": 0.05, "b": 0.01, "c": 0.03, "d": 0.0}


def test_search_keeps_the_most_sensitive_layers_float():
    quantize, evaluate = _fake_model(DAMAGE)
    result = sensitivity.search(quantize, evaluate, candidates=list(DAMAGE), float_accuracy=0.9,
                                budget=0.02, max_float_layers=3)
    assert result.best.float_layers == ("a", "c") and result.met
    assert result.trials == 1 + 4 + 1  # all quantized, 4 leave-one-out probes, then {a, c}
    assert [row["layer"] for row in result.sensitivity] == ["a", "b", "c", "d"]
    assert result.sensitivity[0]["recovered"] == pytest.approx(0.05)


def test_search_reports_the_miss_and_keeps_the_best():
    quantize, evaluate = _fake_model(DAMAGE)
    result = sensitivity.search(quantize, evaluate, candidates=list(DAMAGE), float_accuracy=0.9,
                                budget=0.0, max_float_layers=1)
    assert result.best.float_layers == ("a",) and not result.met
    assert result.to_json()["missed_by"] == pytest.approx(0.04)


def test_search_stops_when_fully_quantized_is_within_budget():
    quantize, evaluate = _fake_model({"a": 0.001})
    result = sensitivity.search(quantize, evaluate, candidates=["a"], float_accuracy=0.9, budget=0.01,
                                max_float_layers=3)
    assert result.trials == 1 and result.best.float_layers == () and result.sensitivity == []


def _accuracy_from_weights(damage: dict[str, float]):
    """A stand-in for onnx_accuracy: each layer stored in int8 costs ``damage[module]``."""
    def fake(path, batches, *, threads=None, progress=None):
        types = initializer_types(Path(path))
        suffix = ".weight_quantized"
        quantized = {name[: -len(suffix)] for name in types if name.endswith(suffix)}
        return 0.9 - sum(damage.get(module, 0.0) for module in quantized)
    return fake


@pytest.mark.parametrize("max_float_layers, met", [(3, True), (1, False)])
def test_accuracy_budget_keeps_layers_float_in_the_pass(tmp_path, registry, data, monkeypatch,
                                                        max_float_layers, met):
    damage = {"features.0": 0.05, "features.4": 0.01, "classifier.1": 0.03}
    monkeypatch.setattr("modelzip.evaluation.accuracy.onnx_accuracy", _accuracy_from_weights(damage))
    produced, details, _ = run_pass(tmp_path, registry, data, small_cnn(), max_accuracy_drop=0.02,
                                    max_float_layers=max_float_layers)
    accuracy = details["accuracy"]
    assert accuracy["met"] is met and accuracy["split"] == "validation"
    types = initializer_types(produced.path)
    assert types["features.0.weight"] == onnx.TensorProto.FLOAT  # the most sensitive layer
    if met:
        assert accuracy["kept_float"] == ["features.0", "classifier.1"]
        assert types["classifier.1.weight"] == onnx.TensorProto.FLOAT
        assert "validation drop 1.00 pt <= 2.00 with 2 layer(s) float" in details["summary"]
    else:
        assert accuracy["kept_float"] == ["features.0"] and accuracy["missed_by"] == pytest.approx(0.02)
        assert "MISSED accuracy budget by 2.00 pt" in details["summary"]
    rows = {row["layer"]: row for row in details["sensitivity"]}
    assert rows["features.0"]["recovered"] == pytest.approx(0.05)
    reasons = {row["layer"]: row["reason"] for row in details["layers"]["kept_float"]}
    assert reasons["features.0"].startswith("accuracy:")


# --------------------------------------------------------------------------- latency honesty


def _slower_int8(paths, input_shape, batch, *, sessions=1, **kwargs):
    """measure_latency stand-in under compare_latency: int8 (the final model) twice as slow as float
    (the baseline) at batch > 1, twice as fast at batch 1, every run within +-1% of that, so the
    real bootstrap has paired rounds and session slots to resample."""
    float_ns = 1_000_000 * batch
    final_ns = float_ns * (2 if batch > 1 else 0.5)
    jitter = [0.99, 1.0, 1.01, 1.0]  # median 1.0; rounds differ, so the interval is not a point
    runs = 24

    def latency(typical_ns):
        times = tuple(int(typical_ns * jitter[i % len(jitter)]) for i in range(runs))
        ms = typical_ns / 1e6
        return Latency(batch, ms, ms * 1.01, ms, runs, 1, times_ns=times,
                       slots=tuple(i % sessions for i in range(runs)))
    return {name: latency(float_ns if name == "baseline" else final_ns) for name in paths}


def test_prefer_faster_returns_the_float_model_when_int8_is_slower(tmp_path, registry, data, monkeypatch):
    monkeypatch.setattr("modelzip.evaluation.latency.measure_latency", _slower_int8)
    produced, details, _ = run_pass(tmp_path, registry, data, small_cnn(), prefer="faster")
    # The pipeline's latency shape: the float model is the baseline, the quantized one the final.
    pair = details["latency"]["batch_64"]
    assert set(details["latency"]) == {"batch_1", "batch_64"}
    assert pair["baseline"] == {"batch": 64, "median_ms": 64.0, "p90_ms": 64.64, "mean_ms": 64.0, "runs": 24,
                                "threads": 1, "quantiles_ms": [63.36, 63.84, 64.0, 64.16, 64.64]}
    assert pair["final"]["median_ms"] == 128.0 and pair["ratio"] == 0.5 and pair["pairs"] == 24
    assert 0.45 < pair["ci_low"] <= 0.5 <= pair["ci_high"] < 0.55 and pair["verdict"] == "SLOWER"
    assert details["latency"]["batch_1"]["verdict"] == "faster"
    assert "int8 SLOWER than fp32 at batch 64 (128 ms vs 64 ms)" in details["summary"]
    assert "faster: batch 1 1 ms -> 0.5 ms" in details["summary"]
    assert details["returned"] == "float (prefer: faster)"
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(op_types(produced.path))
    assert details["summary"].startswith("kept FLOAT model (prefer: faster")


def test_prefer_smaller_keeps_int8_without_timing_it(tmp_path, registry, data, monkeypatch):
    """The report's final latency times the result; the pass does not time the same pair first."""
    timed = []
    monkeypatch.setattr("modelzip.evaluation.latency.measure_latency",
                        lambda *args, **kwargs: timed.append(args) or _slower_int8(*args, **kwargs))
    produced, details, _ = run_pass(tmp_path, registry, data, small_cnn(), prefer="smaller")
    assert timed == [] and details["latency"] is None
    assert details["returned"] == "quantized" and "QuantizeLinear" in op_types(produced.path)
    assert QuantizePass().reads_for(QuantizeConfig(prefer="smaller")) == {"data"}
    assert QuantizePass().reads_for(QuantizeConfig(prefer="faster")) == {"data", "timing"}


def test_prefer_faster_keeps_int8_when_slower_is_within_noise(tmp_path, registry, data, monkeypatch):
    """A point estimate below 1 is not enough: int8 1% slower lies inside the equivalence margin."""
    def one_percent_slower(paths, input_shape, batch, **kwargs):
        measured = _slower_int8(paths, input_shape, batch, **kwargs)
        base = measured["baseline"]
        times = tuple(int(t * 1.01) for t in base.times_ns)
        slower = Latency(batch, base.median_ms * 1.01, base.p90_ms * 1.01, base.mean_ms * 1.01, base.runs, 1,
                         times_ns=times, slots=base.slots)
        return {"baseline": base, "final": slower}

    monkeypatch.setattr("modelzip.evaluation.latency.measure_latency", one_percent_slower)
    produced, details, _ = run_pass(tmp_path, registry, data, small_cnn(), prefer="faster")
    pair = details["latency"]["batch_64"]
    assert pair["ratio"] < 1 and pair["verdict"] == "within noise"
    assert details["returned"] == "quantized" and "QuantizeLinear" in op_types(produced.path)
    assert "latency within noise: batch 1" in details["summary"]


# --------------------------------------------------------------------------- in the pipeline


def _pipeline(tmp_path, registry, name: str, passes: str):
    directory = tmp_path / name
    directory.mkdir()
    (directory / "recipe.yaml").write_text(RECIPE.replace("  - quantize: {}\n", passes))
    recipe = load_recipe(directory / "recipe.yaml", registry=registry)
    return run_recipe(recipe, RunOptions(registry=registry))


def test_both_orders_give_an_int8_onnx(tmp_path, registry):
    # features.3 is a MaxPool: only the exporter's node_modules.json knows that module name. Kept
    # float between two int8 convolutions, Q/DQ still surround it, and the report says so.
    step = "  - quantize: {exclude: [classifier.4, features.3]}\n"
    direct = _pipeline(tmp_path, registry, "direct", step)
    exported = _pipeline(tmp_path, registry, "exported", "  - export: {}\n" + step + "  - export: {}\n")
    assert [s["kind"] for s in exported.report["steps"]] == ["onnx", "onnx", "onnx", "onnx"]  # + optimize
    assert exported.report["steps"][2]["details"]["passthrough"] is True
    for result, index in ((direct, 0), (exported, 1)):
        model = result.output_dir / "model.onnx"
        details = result.report["steps"][index]["details"]
        # The written file has short names; its name map says which is which.
        names = json.loads((result.output_dir / result.report["final"]["name_map"]).read_text())["tensors"]
        assert initializer_types(model)[names["classifier.4.weight"]] == onnx.TensorProto.FLOAT
        assert initializer_types(model)[names["classifier.1.weight_quantized"]] == onnx.TensorProto.INT8
        assert details["nodes"]["float_ops"] == {"Gemm": 1, **PAD}
        assert details["exclude"] == {"classifier.4": ["classifier.4"], "features.3": ["features.3"]}
        assert details["excluded_but_quantized"] == ["features.3"]
        assert result.report["final"]["ratios"]["size"] > 3.0
    assert sorted(op_types(direct.output_dir / "model.onnx")) == \
        sorted(op_types(exported.output_dir / "model.onnx"))


def test_quantizing_twice_is_refused(tmp_path, registry, data):
    first, _, _ = run_pass(tmp_path, registry, data, small_mlp(), mode="dynamic")
    with pytest.raises(PassError) as info:
        run_pass(tmp_path, registry, data, first.path)
    assert "already quantized" in info.value.what and "MatMulInteger" in str(info.value.got)


# --------------------------------------------------------------------------- config and helpers


def test_config_mistakes_are_reported_with_key_paths(tmp_path, registry):
    path = tmp_path / "bad.yaml"
    text = RECIPE.replace("  - quantize: {}\n", """\
  - quantize:
      mode: static
      bits: 4
      percentile: 99.9
      block_size: 100
  - quantize:
      mode: weight_only
      block_size: 100
      max_float_layers: 2
      calibration_sample: 10
  - quantize: {mode: qta}
""")
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registry=registry)
    problems = {p.path: p for p in info.value.problems}
    assert ("`bits` applies only to mode: weight_only, not mode: static; remove it"
            in problems["passes[0].quantize.bits"].message)
    assert problems["passes[0].quantize.bits"].line == text.splitlines().index("      bits: 4") + 1
    assert "method: percentile" in problems["passes[0].quantize.percentile"].message
    assert "applies only to mode: weight_only" in problems["passes[0].quantize.block_size"].message
    assert "power of 2" in problems["passes[1].quantize.block_size"].message
    assert "set max_accuracy_drop" in problems["passes[1].quantize.max_float_layers"].message
    assert "'calibration_samples'" in problems["passes[1].quantize.calibration_sample"].suggestion
    assert "'static'" in problems["passes[2].quantize.mode"].message


@pytest.mark.parametrize("flags, expected", [
    (["avx", "avx2", "avx512f", "avx512_vnni"], False),
    (["avx", "avx2", "fma"], True),
    (["neon"], False),
])
def test_reduce_range_follows_the_cpu(flags, expected):
    chosen, reason = choice.reduce_range(None, flags)
    assert chosen is expected and reason
    assert choice.reduce_range(True, flags) == (True, "set in the recipe")


# --------------------------------------------------------------------------- real data


@needs_fashion
def test_static_int8_keeps_fashion_accuracy(tmp_path, registry):
    from modelzip.evaluation.accuracy import onnx_accuracy, torch_accuracy
    from modelzip.training import train_classifier

    spec = DataSpec(dataset="fashion-mnist", limit_train=3000, limit_eval=2000, val_samples=500,
                    batch_size=128)
    bundle = load_data(spec, base_dir=tmp_path, seed=0)
    torch.manual_seed(0)
    model = fashion_cnn()
    train_classifier(model, bundle, epochs=1, lr=0.05, seed=0)
    float_accuracy = torch_accuracy(model, bundle.batches("eval"))
    assert float_accuracy > 0.7  # trained, so the comparison means something
    produced, details, _ = run_pass(tmp_path, registry, bundle, model)
    int8_accuracy = onnx_accuracy(produced.path, bundle.batches("eval"))
    assert abs(int8_accuracy - float_accuracy) <= 0.01, (float_accuracy, int8_accuracy)
    assert details["size"]["ratio"] > 3.8
    json.dumps(details)  # the report can hold it


def test_a_resolved_quantize_config_loads_back():
    """recipe.resolved.yaml of a quantize step validates again (max_float_layers needs a budget)."""
    import yaml

    from modelzip.errors import RecipeError
    from modelzip.recipe import parse_recipe

    base = ("version: 1\nname: t\nmodel: {source: 'modelzip.zoo:tiny_cnn', input_shape: [1, 1, 28, 28]}\n"
            "data: {dataset: fashion-mnist}\npasses:\n  - quantize: %s\n")
    for params in ("{}", "{max_accuracy_drop: 0.01, max_float_layers: 2}"):
        recipe = parse_recipe(base % params)
        again = parse_recipe(yaml.safe_dump(recipe.to_data()))
        assert again.passes[0].params() == recipe.passes[0].params()
    with pytest.raises(RecipeError) as info:
        parse_recipe(base % "{max_float_layers: 2}")
    assert info.value.problems[0].path == "passes[0].quantize.max_float_layers"
    assert "remove it or set max_accuracy_drop" in info.value.problems[0].message
