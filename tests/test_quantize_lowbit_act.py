"""Sub-8-bit weights with int8 activations (quantize mode qat, activations asymmetric/symmetric) and
weights: auto under an accuracy budget (max_accuracy_drop): the file in parity with the torch
fake-quant model, a planted activation-grid fault caught, and the recipe rules."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from modelzip.errors import PassError
from modelzip.passes.quantize import QuantizeConfig
from modelzip.quantization import lowbit, lowbit_auto, lowbit_onnx
from modelzip.quantization.qat_modules import ActivationFakeQuant
from modelzip.registry import PassRegistry
from tests.qat_kit import qat_recipe, run_quantize, synthetic_data, torch_artifact, trained_tiny_cnn

torch.set_num_threads(1)  # tiny models; leave the other core alone

RECIPE = qat_recipe("  - quantize: {mode: qat, weights: int4, activations: asymmetric}", name="lowbit-act")
LAYERS = ["features.0", "features.4", "classifier.1"]


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


# --------------------------------------------------------------------------- int8 activations


def test_symmetric_input_grid_is_int8_around_zero():
    observer = ActivationFakeQuant(symmetric=True).train()
    x = torch.linspace(-1.0, 3.0, 101)
    y = observer(x)
    scale, zero_point = observer.qparams()
    assert float(zero_point) == 0 and float(scale) == pytest.approx(3.0 / 127)
    steps = y / scale
    assert torch.allclose(steps, torch.round(steps), atol=1e-4) and steps.min() >= -128 and steps.max() <= 127


@pytest.mark.parametrize("weights, activations", [("int4", "asymmetric"), ("ternary", "symmetric"),
                                                  ("binary", "asymmetric")])
def test_int8_inputs_run_in_parity(tmp_path, registry, data, trained_cnn, weights, activations):
    produced, details = run_pass(tmp_path, registry, data, trained_cnn, weights=weights,
                                 activations=activations, int8_layers=[])
    assert details["agreement_with_float"]["top1_agreement"] >= 0.995
    assert details["settings"]["activations"] == activations
    rows = details["low_bit"]["layers"]
    dtype = "int8" if activations == "symmetric" else "uint8"
    assert [row["activation"]["dtype"] for row in rows] == [dtype] * 3
    model = onnx.load(str(produced.path))
    quantize_nodes = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    assert len(quantize_nodes) == 3  # one per quantized layer's input
    assert f"int8 {activations} inputs" in details["summary"]


def _file_and_reference(tmp_path, trained_cnn, data, grids, activations):
    """Train-mode forwards set the observers, then bake, export, rewrite: (file, reference model)."""
    from modelzip.onnx_export import export_onnx
    from modelzip.quantization.layers import find_layers, load_module_map

    wrapped = lowbit._wrap(copy.deepcopy(trained_cnn), grids, activations).train()
    with torch.no_grad():
        for images, _ in data.batches("train", 64):
            wrapped(images)
    model, codes = lowbit.bake(wrapped.eval())
    source = tmp_path / "float.onnx"
    export_onnx(model, (1, 1, 28, 28), source, opset=18, exporter="dynamo", dynamic_batch=True,
                pass_name="t", step=0)
    layers = find_layers(onnx.load(str(source)), load_module_map(tmp_path))
    small = tmp_path / "small.onnx"
    lowbit_onnx.rewrite(source, small, codes, layers)
    return small, lowbit.reference(model, codes)


@pytest.mark.parametrize("activations", ["asymmetric", "symmetric"])
def test_file_computes_the_int8_input_model(tmp_path, trained_cnn, data, activations):
    """The QuantizeLinear/DequantizeLinear pairs compute the trained input grids: the file's logits
    match the reference (input grid, then MatMulNBits' own input rounding) to float rounding."""
    from modelzip.evaluation.accuracy import onnx_outputs

    grids = {"features.0": "int8", "features.4": "int4", "classifier.1": "int2"}
    small, reference = _file_and_reference(tmp_path, trained_cnn, data, grids, activations)
    images = next(iter(data.batches("eval", 64)))[0]
    with torch.no_grad():
        expected = reference(images).numpy()
        weight_only = lowbit.reference(*lowbit.bake(lowbit._wrap(copy.deepcopy(trained_cnn), grids)))(images)
    got = onnx_outputs(small, images.numpy())
    # An input within float rounding of a grid boundary may land on the next code in one of them
    # (BatchNorm folded into the convolution in the file, apart in torch): a one-step difference
    # in a few images; a systematic fault (e.g. a bias rounded to int32) moves every image.
    per_image = np.abs(got - expected).max(axis=-1)
    assert (per_image < 1e-4).mean() >= 0.75 and per_image.max() < 0.05
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.98
    assert np.abs(got - weight_only.numpy()).max() > 1e-3  # the inputs really are rounded


def test_a_wrong_input_grid_in_the_file_fails_the_step(tmp_path, registry, data, trained_cnn, monkeypatch):
    """Plant a fault: the file's input quantizers get a grid 8x too coarse. The parity check stops it."""
    honest = lowbit_onnx._quantize_input

    def coarse(model, node, grid):
        honest(model, node, lowbit.InputRange(grid.scale * 8, grid.zero_point // 8, grid.symmetric))

    monkeypatch.setattr(lowbit_onnx, "_quantize_input", coarse)
    with pytest.raises(PassError) as excinfo:
        run_pass(tmp_path, registry, data, trained_cnn, weights="int4", activations="asymmetric", int8_layers=[])
    assert excinfo.value.exit_code == 3 and "computes the low-bit file differently" in str(excinfo.value)


# --------------------------------------------------------------------------- weights: auto, accuracy budget


def test_auto_within_an_accuracy_budget_takes_the_smallest_grids_that_fit(data, trained_cnn):
    model = copy.deepcopy(trained_cnn)
    measured = lowbit_auto.measure(model, data, LAYERS)
    at_int8 = sum(max(measured.drops[n]["int8"], 0) for n in LAYERS)  # rounding noise on 64 images
    budget = at_int8 + 0.02
    strict = lowbit_auto.choose(model, data, LAYERS, max_accuracy_drop=budget, other_bytes=0, fixed=set())
    loose = lowbit_auto.choose(model, data, LAYERS, max_accuracy_drop=10.0, other_bytes=0, fixed={"features.0"})
    assert strict.predicted_drop <= budget and strict.budget_bytes is None
    rows = {row["layer"]: row for row in strict.rows}
    assert strict.predicted_drop == pytest.approx(sum(max(rows[n]["accuracy_drop"][strict.grids[n]], 0)
                                                      for n in LAYERS), abs=1e-4)
    assert loose.grids["features.0"] == "int8"
    loose_rows = {row["layer"]: row for row in loose.rows}
    smallest = sum(min(loose_rows[n]["bytes"].values()) for n in LAYERS[1:])
    assert loose.estimated_bytes == loose_rows["features.0"]["bytes"]["int8"] + smallest  # all fit: the smallest
    assert loose.estimated_bytes <= strict.estimated_bytes
    assert loose.to_json()["max_accuracy_drop"] == 10.0


def test_auto_keeps_int8_when_no_grid_fits_the_accuracy_budget(data, trained_cnn, monkeypatch):
    monkeypatch.setattr(lowbit_auto, "_accuracy_with",
                        lambda model, layer, grid, images, labels: 1.0 if grid == "int8" else 0.0)
    plan = lowbit_auto.choose(copy.deepcopy(trained_cnn), data, LAYERS, max_accuracy_drop=0.01, other_bytes=0,
                              fixed=set())
    assert set(plan.grids.values()) == {"int8"} and plan.predicted_drop == 0.0


def test_auto_with_an_accuracy_budget_in_the_pass_reports_the_trained_drop(tmp_path, registry, data,
                                                                           trained_cnn):
    produced, details = run_pass(tmp_path, registry, data, trained_cnn, weights="auto", max_accuracy_drop=0.05)
    auto = details["low_bit"]["auto"]
    assert auto["max_accuracy_drop"] == 0.05 and auto["budget_bytes"] is None
    assert auto["predicted_drop"] <= 0.05
    verified = auto["verified"]
    assert verified["within_budget"] == (verified["drop"] <= 0.05)
    assert verified["trained_accuracy"] == pytest.approx(auto["float_accuracy"] - verified["drop"], abs=1e-4)


# --------------------------------------------------------------------------- recipe rules


@pytest.mark.parametrize("params, says", [
    ({"mode": "qat", "weights": "auto", "target_size": 0.1, "max_accuracy_drop": 0.01}, "remove one of them"),
    ({"mode": "qat", "weights": "auto"}, "or max_accuracy_drop"),
    ({"mode": "qat", "weights": "ternary", "max_accuracy_drop": 0.01}, "budget of weights: auto only"),
    ({"mode": "qat", "weights": "auto", "max_accuracy_drop": 0.01, "max_float_layers": 2}, "max_float_layers"),
    ({"mode": "qat", "weights": "int4", "activations": "symmetric", "reduce_range": True}, "reduce_range"),
])
def test_validate_refuses_budget_mistakes_with_reason_and_fix(params, says):
    with pytest.raises(ValueError) as excinfo:
        QuantizeConfig(**params)
    assert says in str(excinfo.value) and "Fix:" in str(excinfo.value)


def test_int8_activations_are_accepted_with_sub_8_bit_weights():
    assert QuantizeConfig(mode="qat", weights="int4", activations="symmetric").lowbit_activations == "symmetric"
    assert QuantizeConfig(mode="qat", weights="binary", activations="asymmetric").lowbit_activations == "asymmetric"
    assert QuantizeConfig(mode="qat", weights="ternary").lowbit_activations == "float"
    assert QuantizeConfig(mode="qat", weights="auto", max_accuracy_drop=0.01).lowbit
