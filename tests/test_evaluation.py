"""Tests for the modelzip.evaluation package (and envinfo): tiny models, hand-computed numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from modelzip import envinfo
from modelzip.evaluation import accuracy, latency, onnx_stats, runtime, torch_stats

INPUT_SHAPE = (1, 1, 8, 8)
# Hand-computed MACs of tiny_cnn() for one 1x8x8 sample (MACs = output elements x
# multiply-adds per output element):
#   conv1 1->4, 3x3:               out 4x6x6 = 144 elems x (1 x 3x3 = 9)  = 1296
#   conv2 4->8, 3x3, s2 p1, g2:    out 8x3x3 =  72 elems x (4/2 x 9 = 18) = 1296
#   fc 72->10:                     10 outputs x 72                        =  720
TINY_CNN_MACS = 1296 + 1296 + 720
# weights + biases: conv1 36+4, conv2 8*2*9+8 = 152, fc 720+10
TINY_CNN_PARAMS = 40 + 152 + 730


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(72, 10),
    )


# The legacy exporter warns that it is deprecated on every call; it is what these
# tests want (fast), so the warning is noise here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]


def export_legacy(module: nn.Module, path: Path, input_shape: tuple[int, ...] = INPUT_SHAPE) -> Path:
    torch.onnx.export(
        module.eval(),
        (torch.randn(input_shape),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path


def quantize_int8(float_path: Path, path: Path, quant_format: str = "QDQ") -> Path:
    """Static int8: QDQ (DequantizeLinear -> Conv) or QOperator (QLinearConv, com.microsoft QGemm)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class RandomReader(CalibrationDataReader):
        def __init__(self) -> None:
            generator = np.random.default_rng(0)
            self.feeds = iter(
                [{"input": generator.standard_normal((2, 1, 8, 8), dtype=np.float32)} for _ in range(4)]
            )

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    quantize_static(
        str(float_path),
        str(path),
        RandomReader(),
        quant_format=QuantFormat[quant_format],
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    float_path = export_legacy(tiny_cnn(), folder / "float.onnx")
    return {"float": float_path, "qdq": quantize_int8(float_path, folder / "qdq.onnx")}


@pytest.fixture(scope="module")
def other_int8_models(models: dict[str, Path]) -> dict[str, Path]:
    from onnxruntime.quantization import quantize_dynamic

    folder = models["float"].parent
    dynamic = folder / "dynamic.onnx"  # ConvInteger / MatMulInteger
    quantize_dynamic(str(models["float"]), str(dynamic))
    return {"qoperator": quantize_int8(models["float"], folder / "qop.onnx", "QOperator"), "dynamic": dynamic}


def random_batches(
    module: nn.Module, count: int = 3, size: int = 16
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random inputs labelled with the torch model's own prediction (so accuracy is 1.0)."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    with torch.no_grad():
        for _ in range(count):
            inputs = torch.randn((size, *INPUT_SHAPE[1:]), generator=generator)
            batches.append((inputs, module.eval()(inputs).argmax(dim=-1)))
    return batches


# ---------------------------------------------------------------- MACs


def test_torch_macs_match_hand_count_for_any_batch_and_keep_mode() -> None:
    module = tiny_cnn().train()
    assert torch_stats.torch_macs(module, (32, 1, 8, 8)) == TINY_CNN_MACS
    assert module.training


def test_onnx_macs_of_legacy_export_match_torch(models: dict[str, Path]) -> None:
    assert onnx_stats.onnx_macs(models["float"]) == TINY_CNN_MACS
    assert onnx_stats.onnx_macs(onnx.load(str(models["float"]))) == TINY_CNN_MACS


def test_onnx_macs_of_qdq_int8_model_equal_float(models: dict[str, Path]) -> None:
    ops = {node.op_type for node in onnx.load(str(models["qdq"])).graph.node}
    assert "DequantizeLinear" in ops  # really the QDQ form the brief is about
    assert onnx_stats.onnx_macs(models["qdq"]) == TINY_CNN_MACS


def test_onnx_macs_of_qoperator_and_dynamic_int8_equal_float(other_int8_models: dict[str, Path]) -> None:
    # onnx shape inference stops at com.microsoft QGemm; the ORT-run fallback fills in.
    ops = {node.op_type for node in onnx.load(str(other_int8_models["qoperator"])).graph.node}
    assert {"QLinearConv", "QGemm"} <= ops
    assert onnx_stats.onnx_macs(other_int8_models["qoperator"]) == TINY_CNN_MACS
    assert onnx_stats.onnx_macs(other_int8_models["dynamic"]) == TINY_CNN_MACS


def test_onnx_macs_of_dynamo_export_match_torch(tmp_path: Path) -> None:
    path = tmp_path / "dynamo.onnx"
    torch.onnx.export(
        tiny_cnn().eval(),
        (torch.randn(2, 1, 8, 8),),
        str(path),
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,
        verbose=False,  # else it prints four progress lines to stdout
    )
    assert (
        onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_param
    )  # batch stayed symbolic
    assert onnx_stats.onnx_macs(path) == TINY_CNN_MACS
    assert onnx_stats.onnx_param_counts(path) == (TINY_CNN_PARAMS, TINY_CNN_PARAMS)


def test_conv1d_macs_torch_and_onnx(tmp_path: Path) -> None:
    # conv 2->3, k5 on length 16: out 3x12 = 36 x (2 x 5) = 360; fc 36->4: 144
    module = nn.Sequential(nn.Conv1d(2, 3, 5), nn.Flatten(), nn.Linear(36, 4))
    assert torch_stats.torch_macs(module, (1, 2, 16)) == 504
    assert onnx_stats.onnx_macs(export_legacy(module, tmp_path / "c1d.onnx", (1, 2, 16))) == 504


def test_onnx_macs_divide_a_fixed_batch(tmp_path: Path) -> None:
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(
        tiny_cnn().eval(), (torch.randn(4, 1, 8, 8),), str(path), dynamo=False, opset_version=17
    )
    assert onnx_stats.onnx_macs(path) == TINY_CNN_MACS


def matmul_nbits_model(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A [batch, 64] x W[64, 32] MatMul, then quantized to int4 MatMulNBits."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    weight = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    weight[:, :16] = 0.0  # half the weights zero: must stay countable after packing
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["logits"])],
        "mm",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 32])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    quantizer = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=False)
    quantizer.process()
    path = tmp_path / "int4.onnx"
    onnx.save(quantizer.model.model, str(path))
    return path, weight


def test_matmul_nbits_macs_and_params(tmp_path: Path) -> None:
    path, weight = matmul_nbits_model(tmp_path)
    assert "MatMulNBits" in {node.op_type for node in onnx.load(str(path)).graph.node}
    assert onnx_stats.onnx_macs(path) == 64 * 32
    total, nonzero = onnx_stats.onnx_param_counts(path)
    assert total == weight.size
    # Small weights also round to the zero point; what ORT computes is the truth:
    # identity @ W gives back the dequantized W.
    dequantized = accuracy.onnx_outputs(path, np.eye(64, dtype=np.float32))
    assert nonzero == np.count_nonzero(dequantized) <= np.count_nonzero(weight)


# ---------------------------------------------------------------- accuracy


def test_torch_and_onnx_accuracy_agree(models: dict[str, Path]) -> None:
    module = tiny_cnn()
    batches = random_batches(module)
    module.train()
    seen: list[int] = []
    assert accuracy.torch_accuracy(module, batches, progress=seen.append) == 1.0
    assert module.training  # mode restored
    assert seen == [16, 16, 16]
    assert accuracy.onnx_accuracy(models["float"], batches, threads=1) == 1.0
    assert accuracy.onnx_accuracy(models["qdq"], batches, threads=1) > 0.5  # int8 runs and is close


def test_onnx_outputs_match_torch(models: dict[str, Path]) -> None:
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        expected = tiny_cnn().eval()(x).numpy()
    np.testing.assert_allclose(
        accuracy.onnx_outputs(models["float"], x.numpy()), expected, rtol=1e-4, atol=1e-5
    )


def test_accuracy_of_no_data_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        accuracy.torch_accuracy(tiny_cnn(), [])


# ---------------------------------------------------------------- size


def test_count_params_sees_zeroed_weights() -> None:
    module = tiny_cnn()
    assert torch_stats.count_params(module) == (TINY_CNN_PARAMS, TINY_CNN_PARAMS)
    with torch.no_grad():
        module[5].weight[:5] = 0.0  # half of fc's 720 weights
    assert torch_stats.count_params(module) == (TINY_CNN_PARAMS, TINY_CNN_PARAMS - 360)


def test_onnx_param_counts_same_total_float_and_int8(
    models: dict[str, Path], other_int8_models: dict[str, Path]
) -> None:
    assert onnx_stats.onnx_param_counts(models["float"]) == (TINY_CNN_PARAMS, TINY_CNN_PARAMS)
    for path in [models["qdq"], *other_int8_models.values()]:
        total, nonzero = onnx_stats.onnx_param_counts(path)
        assert total == TINY_CNN_PARAMS, path.name  # scales and zero points are not counted
        assert TINY_CNN_PARAMS - 10 <= nonzero <= total  # a few tiny weights may round to zero


def test_pruned_zeros_stay_visible_after_int8(tmp_path: Path) -> None:
    module = tiny_cnn()
    with torch.no_grad():
        module[5].weight[:5] = 0.0  # 360 of fc's 720 weights
    float_path = export_legacy(module, tmp_path / "pruned.onnx")
    assert onnx_stats.onnx_param_counts(float_path) == (TINY_CNN_PARAMS, TINY_CNN_PARAMS - 360)
    total, nonzero = onnx_stats.onnx_param_counts(quantize_int8(float_path, tmp_path / "pruned_qdq.onnx"))
    assert total == TINY_CNN_PARAMS
    assert TINY_CNN_PARAMS - 370 <= nonzero <= TINY_CNN_PARAMS - 360


def test_state_dict_bytes_cover_the_weights() -> None:
    assert torch_stats.state_dict_bytes(tiny_cnn()) > TINY_CNN_PARAMS * 4


def test_zip_bytes_smaller_for_mostly_zero_file(tmp_path: Path) -> None:
    generator = np.random.default_rng(0)
    dense = generator.standard_normal(50_000).astype(np.float32)
    sparse = dense.copy()
    sparse[generator.random(50_000) < 0.9] = 0.0
    (tmp_path / "dense.bin").write_bytes(dense.tobytes())
    (tmp_path / "sparse.bin").write_bytes(sparse.tobytes())
    dense_zip = onnx_stats.zip_bytes(tmp_path / "dense.bin")
    assert onnx_stats.zip_bytes(tmp_path / "sparse.bin") < 0.3 * dense_zip
    assert dense_zip <= dense.nbytes * 1.01


# ---------------------------------------------------------------- latency


def test_measure_latency_two_models(models: dict[str, Path]) -> None:
    result = latency.measure_latency(models, INPUT_SHAPE, batch=4, threads=1, warmup=2, repeats=7)
    assert set(result) == {"float", "qdq"}
    for measured in result.values():
        assert measured.runs == 7 and measured.batch == 4 and measured.threads == 1
        assert 0 < measured.median_ms <= measured.p90_ms
        assert measured.mean_ms > 0


def test_measurement_sessions_bound_thread_spinning(models: dict[str, Path]) -> None:
    # Idle threads spinning for onnxruntime's default time made interleaved sessions slow each
    # other down (runtime.MEASUREMENT_SESSION_CONFIG); every measurement session sets the bound.
    options = runtime.ort_session(models["float"], threads=1).get_session_options()
    for key, value in runtime.MEASUREMENT_SESSION_CONFIG.items():
        assert options.get_session_config_entry(key) == value


def test_timing_inputs_name_the_session_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    # A step that times models is keyed on how its sessions were set up: changing that retimes.
    from modelzip import inputs
    from modelzip.recipe import load_recipe

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "quickstart.yaml")
    before = inputs.timing_fingerprint(recipe, threads=2)
    monkeypatch.setattr(runtime, "TIMING_METHOD", {"session_config": {}, "settle_s": 0.0})
    assert inputs.timing_fingerprint(recipe, threads=2) != before


class RecordingSession:
    """Stands in for an ORT session: records run order, sleeps a fixed time."""

    def __init__(self, name: str, log: list[str], seconds: float = 0.0) -> None:
        self.name, self.log, self.seconds = name, log, seconds

    def get_inputs(self) -> list:
        return [type("Input", (), {"name": "input", "type": "tensor(float)"})()]

    def run(self, _outputs: object, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        import time

        assert feed["input"].shape == (3, 1, 8, 8) and feed["input"].dtype == np.float32
        self.log.append(self.name)
        time.sleep(self.seconds)
        return [feed["input"]]


def test_measure_latency_interleaves_models(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    # Runs longer than a turn (latency.TURN_S): one run of each model per round.
    seconds = 1.2 * latency.TURN_S
    monkeypatch.setattr(runtime, "ort_session",
                        lambda path, threads: RecordingSession(str(path), log, seconds))
    result = latency.measure_latency({"a": Path("a"), "b": Path("b")}, INPUT_SHAPE, 3, warmup=1, repeats=6)
    timed = log[2:]  # after one warm-up run of each
    assert len(timed) == 12 and result["a"].runs == result["b"].runs == 6
    # Every round runs each model once, and the first model alternates.
    assert all(set(timed[i : i + 2]) == {"a", "b"} for i in range(0, 12, 2))
    assert timed[0::2][:2] == ["a", "b"]


def test_fast_models_take_turns_of_several_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    # Runs a quarter of a turn long: about four timed runs per turn, after one untimed run.
    seconds = latency.TURN_S / 4
    monkeypatch.setattr(runtime, "ort_session",
                        lambda path, threads: RecordingSession(str(path), log, seconds))
    result = latency.measure_latency({"a": Path("a"), "b": Path("b")}, INPUT_SHAPE, 3, warmup=1, repeats=6)
    assert result["a"].runs == result["b"].runs == 6 and len(result["a"].times_ns) == 6
    timed = "".join(log[2:])
    turn = len(timed) - len(timed.lstrip("a")) - 1  # timed runs per turn (4, or 3 if sleep overshoots)
    assert 2 <= turn < 6
    # Each turn: one untimed run, then `turn` timed ones; the first model alternates by round.
    expected, left = "", 6
    for round_index in range(-(-6 // turn)):
        count = min(turn, left)
        order = "ab" if round_index % 2 == 0 else "ba"
        expected += "".join(name * (1 + count) for name in order)
        left -= count
    assert timed == expected


def test_measure_latency_caps_repeats_of_slow_models(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    monkeypatch.setattr(latency, "LATENCY_BUDGET_S", 0.02)
    monkeypatch.setattr(runtime, "ort_session", lambda path, threads: RecordingSession("slow", log, 0.01))
    result = latency.measure_latency({"slow": Path("slow")}, INPUT_SHAPE, 3, warmup=1, repeats=50)
    assert result["slow"].runs == latency.MIN_TIMED_RUNS  # 0.02 s budget / 0.01 s run = 2, raised to 5
    assert result["slow"].median_ms >= 10


def test_p90_interpolates_like_numpy() -> None:
    times = [5, 1, 9, 3, 7, 2, 8]
    assert latency._percentile(sorted(times), 0.9) == pytest.approx(np.percentile(times, 90))


def test_measure_latency_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="repeats"):
        latency.measure_latency({}, INPUT_SHAPE, 1, repeats=0)


# ---------------------------------------------------------------- environment


def test_environment_is_json_ready() -> None:
    import json

    env = envinfo.environment(threads=2)
    assert env["threads"] == 2 and env["cpu_count"] >= 1
    assert env["torch"] != "unknown" and "CPUExecutionProvider" in env["ort_providers"]
    assert set(env["cpu_flags"]) <= set(envinfo.RELEVANT_CPU_FLAGS)
    assert env["vnni"] == any(flag in env["cpu_flags"] for flag in envinfo.VNNI_FLAGS)
    json.dumps(env)
