"""quantize mode qat: fake quantization with a straight-through gradient, an int8 ONNX that
onnxruntime runs, learned activation ranges carried into the graph, accuracy vs static PTQ,
and config errors."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from modelzip import load_recipe, run_recipe
from modelzip.artifacts import Artifact
from modelzip.errors import PassError, RecipeError
from modelzip.evaluation.accuracy import onnx_accuracy, onnx_outputs
from modelzip.pipeline import RunOptions
from modelzip.quantization.qat_modules import (
    ActivationFakeQuant,
    QATLayer,
    fake_quant_layers,
    fake_quantize,
    insert_fake_quant,
    remove_fake_quant,
)
from modelzip.registry import PassRegistry
from tests.qat_kit import qat_recipe, run_quantize, synthetic_data, torch_artifact, trained_tiny_cnn

torch.set_num_threads(1)  # tiny models; leave the other core alone

RECIPE = qat_recipe("  - quantize: {mode: qat}", name="qat")


@pytest.fixture(scope="module")
def registry() -> PassRegistry:
    return PassRegistry.from_entry_points()


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


@pytest.fixture(scope="module")
def trained_cnn(data):
    return trained_tiny_cnn(data, epochs=6)


def run_pass(tmp_path, registry, data, artifact, **params):
    return run_quantize(tmp_path, registry, data, RECIPE, artifact, **params)


# --------------------------------------------------------------------------- fake quantization


def test_fake_quantize_rounds_to_the_grid_and_passes_gradients_inside_the_range():
    scale, zero_point = torch.tensor(0.1), torch.tensor(10.0)
    x = torch.tensor([-2.0, -0.96, 0.0, 0.123, 0.26, 24.0, 30.0], requires_grad=True)
    y = fake_quantize(x, scale, zero_point, 0, 255)
    # Representable range: (0 - 10) * 0.1 = -1.0 .. (255 - 10) * 0.1 = 24.5.
    expected = torch.tensor([-1.0, -1.0, 0.0, 0.1, 0.3, 24.0, 24.5])  # 0.26 -> q 12.6 -> 13
    assert torch.allclose(y, expected, atol=1e-6)
    q = y.detach() / scale + zero_point
    assert torch.allclose(q, q.round(), atol=1e-4)  # on the integer grid
    y.backward(torch.arange(1.0, 8.0))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]  # straight through, zero when clamped


def test_qat_layer_quantizes_weights_per_channel_and_keeps_zeros():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        conv.weight[0, 0] = 0.0
    model = insert_fake_quant(torch.nn.Sequential(conv), 127, lambda name: False)
    wrapper = model[0]
    assert isinstance(wrapper, QATLayer) and list(fake_quant_layers(model)) == ["0"]
    model.train()(torch.randn(4, 2, 5, 5))
    assert wrapper.input_quant.learned_range() is not None
    from modelzip.quantization.qat_modules import fake_quantize_weight

    w = fake_quantize_weight(conv.weight, 127)
    steps = conv.weight.detach().abs().flatten(1).amax(1) / 127
    assert torch.allclose(w / steps.view(-1, 1, 1, 1), (w / steps.view(-1, 1, 1, 1)).round(), atol=1e-4)
    assert (w[0, 0] == 0).all()
    assert remove_fake_quant(model)[0] is conv


def test_observer_moves_only_in_training_mode():
    observer = ActivationFakeQuant()
    observer.train()(torch.tensor([-1.0, 3.0]))
    observer.train()(torch.tensor([0.0, 13.0]))
    assert observer.max_val.item() == pytest.approx(0.99 * 3.0 + 0.01 * 13.0)
    before = observer.learned_range()
    observer.eval()(torch.tensor([-100.0, 100.0]))
    assert observer.learned_range() == before
    assert before["scale"] == pytest.approx((before["rmax"] - before["rmin"]) / 255, rel=1e-6)


# --------------------------------------------------------------------------- the pass


@pytest.fixture(scope="module")
def qat_and_static(tmp_path_factory, registry, data, trained_cnn):
    tmp = tmp_path_factory.mktemp("qat")
    produced, details = run_pass(tmp, registry, data, torch_artifact(trained_cnn), mode="qat", epochs=1,
                                 calibration_samples=256)
    static, _ = run_pass(tmp, registry, data, torch_artifact(trained_cnn), calibration_samples=256)
    return produced, details, static


def test_qat_writes_an_int8_onnx_that_onnxruntime_runs(qat_and_static, data, trained_cnn):
    produced, details, _ = qat_and_static
    onnx.checker.check_model(str(produced.path), full_check=True)
    types = {init.name: init.data_type for init in onnx.load(str(produced.path)).graph.initializer}
    for module in ("features.0", "features.4", "classifier.1"):
        assert types[f"{module}.weight_quantized"] == onnx.TensorProto.INT8
    logits = onnx_outputs(produced.path, next(data.batches("eval"))[0].numpy(), threads=1)
    assert logits.shape == (64, 4) and np.isfinite(logits).all()
    assert details["mode"] == "qat" and details["layers"]["quantized"] == ["features.0", "features.4",
                                                                           "classifier.1"]
    qat = details["qat"]
    assert qat["epochs_run"] == 1 and len(qat["curve"]) == 1 and np.isfinite(qat["curve"][0]["loss"])
    assert details["summary"].startswith("qat 1 epoch") and "3 learned /" in details["summary"]
    assert not isinstance(trained_cnn.features[0], QATLayer)  # the input module is untouched


def test_learned_ranges_reach_the_int8_graph(qat_and_static):
    _, details, _ = qat_and_static
    learned = details["qat"]["learned_ranges"]
    assert sorted(row["module"] for row in learned) == ["classifier.1", "features.0", "features.4"]
    for row in learned:
        # The observer's float32 scale, written unchanged into the QuantizeLinear of that tensor.
        assert row["scale_in_graph"] == pytest.approx(row["scale"], rel=1e-6)
        assert 0 <= row["zero_point"] <= 255 and row["rmin"] < row["rmax"]
    # tiny_cnn's head reads an AveragePool (ORT gives a pool its input's range): kept float instead.
    head = next(row for row in learned if row["module"] == "classifier.1")
    assert head["kept_float_for_range"] and not {"Conv", "Gemm"} & set(details["nodes"]["float_ops"])
    calibrated = details["qat"]["calibrated_tensors"]
    assert calibrated and not {row["tensor"] for row in learned} & set(calibrated)
    assert details["settings"]["calibration"]["samples"] == 256


def test_qat_accuracy_is_at_least_static_ptq(qat_and_static, data):
    produced, _, static = qat_and_static
    qat_accuracy = onnx_accuracy(produced.path, data.batches("eval"), threads=1)
    static_accuracy = onnx_accuracy(static.path, data.batches("eval"), threads=1)
    assert 0.4 < static_accuracy < 0.99  # noise 2.5: learnable, not trivial
    assert qat_accuracy >= static_accuracy - 0.02


def test_qat_keeps_pruned_zeros_and_distills(tmp_path, registry, data, trained_cnn):
    import copy

    model = copy.deepcopy(trained_cnn)
    with torch.no_grad():
        model.features[4].weight[:8] = 0.0  # half the filters pruned (masked)
    _, details = run_pass(tmp_path, registry, data, torch_artifact(model), mode="qat", lr=0.01,
                          distill={"teacher": "input", "alpha": 0.5}, calibration_samples=64)
    sparsity = details["qat"]["sparsity_preserved"]
    assert sparsity["masked_tensors"] == 1 and sparsity["zeros_kept"]
    assert details["qat"]["distilled"] and " distilled" in details["summary"]


def test_qat_on_onnx_input_says_to_move_it_before_export(tmp_path, registry, data):
    artifact = Artifact(kind="onnx", input_shape=(1, 1, 28, 28), id="in", path=tmp_path / "m.onnx")
    with pytest.raises(PassError) as info:
        run_pass(tmp_path, registry, data, artifact, mode="qat")
    assert "before export" in info.value.fix and info.value.pass_name == "quantize"


def test_qat_in_a_recipe_and_after_export(tmp_path, registry):
    def pipeline(name: str, passes: str):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "recipe.yaml"
        path.write_text(RECIPE.replace("  - quantize: {mode: qat}\n", passes))
        return run_recipe(load_recipe(path, registry=registry), RunOptions(registry=registry))

    result = pipeline("ok", "  - quantize: {mode: qat, calibration_samples: 64}\n")
    step = result.report["steps"][0]
    assert step["kind"] == "onnx" and step["details"]["qat"]["epochs_run"] == 1
    # The trained model is new content with a new id (Artifact.evolve): the baseline's export of the
    # untrained weights must not be reused.
    assert "float_export" not in step["details"]
    assert (result.output_dir / "model.onnx").is_file()
    with pytest.raises(RecipeError) as info:  # refused before anything runs
        pipeline("late", "  - export: {}\n  - quantize: {mode: qat}\n")
    (problem,) = info.value.problems
    assert problem.path == "passes[1].quantize" and "'quantize' (mode qat) takes a torch model" in problem.message
    assert "reorder the passes" in problem.suggestion


# --------------------------------------------------------------------------- config


def test_qat_fields_are_checked_per_mode(tmp_path, registry):
    text = RECIPE.replace("  - quantize: {mode: qat}\n", """  - quantize:
      mode: static
      epochs: 2
  - quantize:
      mode: qat
      distill: {teacher: inptu}
      per_channel: false
      lr: 0
""")
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registry=registry)
    problems = {p.path: p for p in info.value.problems}
    assert "`epochs` applies only to mode: qat, not mode: static" in problems["passes[0].quantize.epochs"].message
    assert problems["passes[0].quantize.epochs"].line == text.splitlines().index("      epochs: 2") + 1
    assert "'input'" in problems["passes[1].quantize.distill.teacher"].message
    assert "not mode: qat" in problems["passes[1].quantize.per_channel"].message
    assert "passes[1].quantize.lr" in problems
    ok = RECIPE.replace("{mode: qat}", "{mode: qat, epochs: 2, lr: 0.01, batch_size: 32, "
                                       "distill: {teacher: baseline}}")
    path.write_text(ok)
    config = load_recipe(path, registry=registry).passes[0].config
    assert (config.mode, config.epochs, config.lr, config.batch_size) == ("qat", 2, 0.01, 32)
    assert config.distill.teacher == "baseline"
