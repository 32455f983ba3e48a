"""quantize mode qat with sub-8-bit weights: the grids and their straight-through gradient, the
small ONNX file a default onnxruntime session runs in parity with the torch model, a planted
runtime fault caught by that parity check, and the recipe rules."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from modelzip import load_recipe
from modelzip.errors import PassError, RecipeError
from modelzip.passes.quantize import QuantizeConfig
from modelzip.quantization import QuantizeFailure, lowbit, lowbit_onnx
from modelzip.registry import PassRegistry
from modelzip.zoo import tiny_cnn
from tests.qat_kit import qat_recipe, run_quantize, synthetic_data, torch_artifact, trained_tiny_cnn

torch.set_num_threads(1)  # tiny models; leave the other core alone

RECIPE = qat_recipe("  - quantize: {mode: qat, weights: ternary}", name="lowbit")


@pytest.fixture(scope="module")
def registry() -> PassRegistry:
    return PassRegistry.from_entry_points()


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


@pytest.fixture(scope="module")
def trained_cnn(data):
    return trained_tiny_cnn(data, epochs=4)


def run_pass(tmp_path, registry, data, module, **params):
    return run_quantize(tmp_path, registry, data, RECIPE, torch_artifact(module), mode="qat", **params)


# --------------------------------------------------------------------------- grids


@pytest.mark.parametrize("grid, levels", [("int8", 255), ("int4", 15), ("int2", 4), ("ternary", 3),
                                          ("binary", 2)])
def test_each_channel_uses_at_most_its_levels(grid, levels):
    weight = torch.randn(6, 5, 3, 3)
    values, scale, zero_point = lowbit.quantize(weight, grid)
    for channel in values.flatten(1):
        assert len(torch.unique(channel)) <= levels
    dequantized = lowbit.dequantize(weight, grid)
    assert torch.equal(dequantized, values * scale.view(-1, 1, 1, 1))
    assert (zero_point is not None) == (grid == "int2")


def test_ternary_is_twn_and_binary_is_xnor():
    weight = torch.tensor([[0.1, -0.9, 1.1, 0.05, -0.2, 0.0]])
    values, scale, _ = lowbit.quantize(weight, "ternary")
    # threshold 0.7 * mean|w| = 0.7 * 2.35 / 6 = 0.274: only -0.9 and 1.1 are above it
    assert values.tolist() == [[0, -1, 1, 0, 0, 0]]
    assert scale.item() == pytest.approx((0.9 + 1.1) / 2)
    values, scale, _ = lowbit.quantize(weight, "binary")
    assert values.tolist() == [[1, -1, 1, 1, -1, 1]]  # 0 counts as +1
    assert scale.item() == pytest.approx(weight.abs().mean().item())


def test_int2_grid_is_asymmetric_and_contains_zero():
    weight = torch.tensor([[0.0, 0.3, 0.6, 0.9, 0.45]])  # all >= 0: 4 levels over [0, 0.9]
    values, scale, zero_point = lowbit.quantize(weight, "int2")
    assert zero_point.tolist() == [0]
    assert scale.item() == pytest.approx(0.3)
    assert (values * scale).flatten().tolist() == pytest.approx([0.0, 0.3, 0.6, 0.9, 0.6])


def test_straight_through_gradient_reaches_the_latent_weight():
    layer = lowbit.LowBitLayer(torch.nn.Linear(8, 3), "binary")
    layer(torch.randn(4, 8)).sum().backward()
    grad = layer.layer.weight.grad
    assert grad is not None and grad.abs().sum() > 0  # sign() alone would give zero gradient


def test_first_and_last_layers_stay_8_bit_unless_told():
    model = tiny_cnn(num_classes=4)
    assert lowbit.plan(model, "ternary", None) == {"features.0": "int8", "features.4": "ternary",
                                                   "classifier.1": "int8"}
    assert set(lowbit.plan(model, "ternary", ()).values()) == {"ternary"}
    assert lowbit.plan(model, "binary", ("classifier.*",))["classifier.1"] == "int8"
    with pytest.raises(QuantizeFailure) as excinfo:
        lowbit.plan(model, "binary", ("clasifier.1",))
    assert excinfo.value.got == "clasifier.1"


def test_pack_puts_the_first_code_in_the_low_bits():
    assert lowbit_onnx.pack(np.array([[1, 2, 3, 0]]), 2).tolist() == [[0b00111001]]
    assert lowbit_onnx.pack(np.array([[7, 1]]), 4).tolist() == [[0x17]]


# --------------------------------------------------------------------------- the file


@pytest.mark.parametrize("weights", ["int4", "int2", "ternary", "binary"])
def test_lowbit_file_runs_in_parity(tmp_path, registry, data, trained_cnn, weights):
    produced, details = run_pass(tmp_path, registry, data, trained_cnn, weights=weights, int8_layers=[])
    parity = details["agreement_with_float"]
    assert parity["top1_agreement"] >= 0.995 and parity["samples"] == 256
    table = details["low_bit"]
    formats = {row["layer"]: row["format"] for row in table["layers"]}
    linear = "bit-packed uint8, unpacked at load" if weights == "binary" else "MatMulNBits"
    assert formats == {"features.0": "DequantizeLinear INT4", "features.4": "DequantizeLinear INT4",
                       "classifier.1": linear}
    model = onnx.load(str(produced.path))
    ops = {node.op_type for node in model.graph.node}
    assert ("MatMulNBits" in ops) == (weights != "binary")
    initializers = {init.name: init for init in model.graph.initializer}
    assert not any(i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 4 for i in initializers.values())
    file = table["file"]
    assert file["bytes"] == produced.path.stat().st_size == file["weight_bytes"] + file["graph_bytes"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert "default session" in meta["modelzip.onnxruntime.session_options"]
    assert f"{weights}: " in meta["modelzip.lowbit.formats"]


def test_pipeline_writes_the_low_bit_file_as_the_final_model(tmp_path, registry):
    """Through run_recipe: the trained weights are exported (not the baseline's export of the input),
    and the final optimize step keeps the weights small."""
    from modelzip import run_recipe
    from modelzip.pipeline import RunOptions

    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.replace("{mode: qat, weights: ternary}", "{mode: qat, weights: int2, int8_layers: []}"))
    result = run_recipe(load_recipe(path, registry=registry), RunOptions(registry=registry))
    step = result.report["steps"][0]
    assert [row["grid"] for row in step["details"]["low_bit"]["layers"]] == ["int2"] * 3
    model = onnx.load(str(result.output_dir / "model.onnx"))
    assert {"MatMulNBits", "DequantizeLinear"} <= {node.op_type for node in model.graph.node}


@pytest.mark.parametrize("grids, formats", [
    ({"features.0": "int8", "features.4": "int2", "classifier.1": "binary"},
     ["DequantizeLinear INT8", "DequantizeLinear INT4", "bit-packed uint8, unpacked at load"]),
    ({"features.0": "int4", "features.4": "ternary", "classifier.1": "int4"},
     ["DequantizeLinear INT4", "DequantizeLinear INT4", "MatMulNBits"]),
])
def test_file_computes_the_trained_model_exactly(tmp_path, trained_cnn, data, grids, formats):
    """Every format reconstructs ``values * scale``, and the reference simulates what MatMulNBits'
    int8 kernel does to its input: the file's logits match the reference's to float rounding."""
    import copy

    from modelzip.evaluation.accuracy import onnx_outputs
    from modelzip.onnx_export import export_onnx
    from modelzip.quantization.layers import find_layers, load_module_map

    model, codes = lowbit.bake(lowbit._wrap(copy.deepcopy(trained_cnn), grids).eval())
    source = tmp_path / "float.onnx"
    export_onnx(model, (1, 1, 28, 28), source, opset=18, exporter="dynamo", dynamic_batch=True,
                pass_name="t", step=0)
    layers = find_layers(onnx.load(str(source)), load_module_map(tmp_path))
    rows = lowbit_onnx.rewrite(source, tmp_path / "small.onnx", codes, layers)
    assert [row.format for row in rows] == formats
    images = next(iter(data.batches("eval", 64)))[0]
    with torch.no_grad():
        expected = lowbit.reference(model, codes)(images).numpy()
    got = onnx_outputs(tmp_path / "small.onnx", images.numpy())
    assert np.abs(got - expected).max() < 1e-4


def test_a_runtime_that_computes_the_file_wrongly_fails_the_step(tmp_path, registry, data, trained_cnn,
                                                                 monkeypatch):
    """Plant a fault between training and runtime: MatMulNBits reads codes in another order than
    the trained ones (a packing bug, or a kernel reading them differently). The parity check
    against the torch model must stop the run with exit code 3."""
    honest = lowbit_onnx.pack
    monkeypatch.setattr(lowbit_onnx, "pack", lambda codes, bits: honest(codes[..., ::-1].copy(), bits))
    with pytest.raises(PassError) as excinfo:
        run_pass(tmp_path, registry, data, trained_cnn, weights="ternary", int8_layers=[])
    error = excinfo.value
    assert error.exit_code == 3
    assert "computes the low-bit file differently" in str(error)
    assert "agreement" in error.got


def test_weights_that_are_not_the_trained_grid_are_refused(tmp_path, trained_cnn):
    codes = lowbit.Codes("ternary", np.ones((4, 64), np.int8), np.ones(4, np.float32), None)
    weight = np.ones((4, 64), np.float32)
    weight[0, 0] = 2.0  # not values * scale for any per-channel scale
    with pytest.raises(QuantizeFailure, match="not its trained ternary grid"):
        lowbit_onnx._solve_scale(weight, codes, "classifier.1")


# --------------------------------------------------------------------------- recipe rules


@pytest.mark.parametrize("params, says", [
    ({"mode": "static", "weights": "binary"}, "weights: binary needs mode: qat"),
    ({"mode": "weight_only", "weights": "int4"}, "mode: weight_only with bits: 4"),
    ({"mode": "static", "activations": "float"}, "activations: float means weight-only"),
    ({"mode": "qat", "weights": "int2", "calibration_samples": 64}, "calibration_samples apply to the int8"),
    ({"mode": "qat", "int8_layers": ["features.0"]}, "int8_layers keeps layers at 8 bits"),
    ({"mode": "qat", "activations": "symmetric"}, "symmetric int8 activations are offered with sub-8-bit"),
    ({"mode": "qat", "weights": "auto"}, "add target_size"),
])
def test_validate_refuses_combinations_with_reason_and_fix(params, says):
    with pytest.raises(ValueError) as excinfo:
        QuantizeConfig(**params)
    assert says in str(excinfo.value) and "Fix:" in str(excinfo.value)


def test_recipe_error_names_the_step(tmp_path, registry):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.replace("{mode: qat, weights: ternary}", "{mode: dynamic, weights: ternary}"))
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path, registry=registry)
    assert "passes[0].quantize" in str(excinfo.value) and "needs mode: qat" in str(excinfo.value)


def test_target_size_belongs_to_weights_auto():
    with pytest.raises(ValueError, match="target_size"):
        QuantizeConfig(mode="qat", weights="ternary", target_size=0.1)


# --------------------------------------------------------------------------- weights: auto


def test_layer_bytes_follow_the_file_formats():
    from modelzip.quantization.lowbit_auto import layer_bytes

    # 256 x 3136 Linear, 2 bits: 25 blocks of 128 per output, 32 bytes of codes + one fp32 scale each;
    # 4 bits: 13 blocks of 256, 128 bytes each
    assert layer_bytes((256, 3136), True, "ternary") == 256 * 25 * (32 + 4)
    assert layer_bytes((256, 3136), True, "int2") == 256 * 25 * (32 + 4) + 256 * 7  # packed zero points
    assert layer_bytes((256, 3136), True, "int4") == 256 * 13 * (128 + 4)
    assert layer_bytes((256, 3136), True, "binary") == 3136 * 256 // 8 + 4 * 256
    assert layer_bytes((64, 32, 3, 3), False, "int4") == 64 * 32 * 9 // 2 + 4 * 64
    assert layer_bytes((64, 32, 3, 3), False, "binary") == layer_bytes((64, 32, 3, 3), False, "int4")


def test_auto_fits_the_budget_with_the_least_sensitive_grids(data, trained_cnn):
    from modelzip.quantization import lowbit_auto

    names = ["features.0", "features.4", "classifier.1"]
    model = __import__("copy").deepcopy(trained_cnn)
    all_int8 = sum(lowbit_auto.layer_bytes(tuple(model.get_submodule(n).weight.shape), "classifier" in n, "int8")
                   for n in names)
    plan = lowbit_auto.choose(model, data, names, budget_bytes=all_int8 // 2, other_bytes=0, fixed={"features.0"})
    assert plan.estimated_bytes <= all_int8 // 2 and plan.grids["features.0"] == "int8"
    assert any(grid != "int8" for grid in plan.grids.values())
    rows = {row["layer"]: row for row in plan.rows}
    assert set(rows["features.4"]["accuracy_drop"]) == set(lowbit_auto.CANDIDATES)
    assert plan.estimated_bytes == sum(rows[n]["bytes"][plan.grids[n]] for n in names)
    assert torch.equal(model.features[0].weight, trained_cnn.features[0].weight)  # probes restore weights
    with pytest.raises(QuantizeFailure, match="target_size cannot be met"):
        lowbit_auto.choose(model, data, names, budget_bytes=10, other_bytes=0, fixed=set())


def test_auto_in_the_pass_reports_its_choice(tmp_path, registry, data, trained_cnn):
    produced, details = run_pass(tmp_path, registry, data, trained_cnn, weights="auto", target_size=0.5)
    auto = details["low_bit"]["auto"]
    assert auto["estimated_bytes"] <= auto["budget_bytes"] == int(0.5 * auto["fp32_bytes"])
    chosen = {row["layer"]: row["grid"] for row in auto["layers"]}
    assert chosen == {row["layer"]: row["grid"] for row in details["low_bit"]["layers"]}


def test_lowbit_choices_are_accepted():
    assert QuantizeConfig(mode="qat", weights="binary").lowbit
    assert QuantizeConfig(mode="qat", activations="float").lowbit  # int8 weights, weight-only
    assert not QuantizeConfig(mode="qat").lowbit
    assert QuantizeConfig(mode="qat", weights="int4", int8_layers=[]).int8_layers == ()
