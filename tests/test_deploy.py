"""Deploy targets end to end: conversions offline and cached, each target measured in its runtime,
failures reported per target (the others still run) and exit 3 once the report is written."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelzip.cli import app
from modelzip.deploy.worker import convert_offline
from modelzip.errors import EXIT_RUN_FAILED, TargetError
from modelzip.offline import offline
from modelzip.pipeline import RunOptions, run_recipe
from modelzip.recipe import parse_recipe
from modelzip.target_registry import TargetRegistry
from modelzip.testing.fixtures import _RECIPE, tiny_artifact
from tests.deploy_fakes import BrokenTarget, PhoneHomeTarget, ShiftTarget

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
HAVE_MNN = importlib.util.find_spec("MNN") is not None
# `make test` installs the extras and sets MODELZIP_REQUIRE_DEPLOY=1, so CI cannot skip these.
REQUIRE_DEPLOY = os.environ.get("MODELZIP_REQUIRE_DEPLOY") == "1"
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO and not REQUIRE_DEPLOY,
                                    reason="pip install 'modelzip[openvino]' (make test does)")
needs_mnn = pytest.mark.skipif(not HAVE_MNN and not REQUIRE_DEPLOY,
                               reason="pip install 'modelzip[mnn]' (make test does)")


def fakes() -> TargetRegistry:
    registry = TargetRegistry.from_entry_points()
    for cls in (ShiftTarget, BrokenTarget):
        registry.register(cls)
    return registry


def tiny_run(tmp_path: Path, deploy: str, passes: str = ""):
    recipe = parse_recipe(_RECIPE + passes + "deploy:\n" + deploy, base_dir=tmp_path, targets=fakes())
    return run_recipe(recipe, RunOptions(out=tmp_path / "run"))


# --------------------------------------------------------------------------- offline


def test_offline_refuses_network_and_installers_and_records_them():
    with offline() as refused:
        with pytest.raises(PermissionError):
            socket.create_connection(("192.0.2.1", 443), timeout=0.5)
        with pytest.raises(PermissionError):
            subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True)
        subprocess.run([sys.executable, "-c", "pass"], check=True)  # other processes may run
    assert len(refused) == 2 and "192.0.2.1" in refused[0] and "-m pip --version" in refused[1]
    subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, check=True)  # outside: allowed


def _convert(target_cls, params: dict, tmp_path: Path, onnx_path: Path | None = None, calibrate: bool = False):
    import numpy as np

    onnx_path = onnx_path or Path(tiny_artifact("onnx", work_dir=tmp_path).path)
    calibration = None
    if calibrate:
        calibration = tmp_path / "calibration.npy"
        np.save(calibration, np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32))
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    scratch.mkdir()
    return convert_offline(target_cls, params, onnx_path, (1, 1, 28, 28), calibration, out, scratch), out


def test_a_conversion_that_phones_home_is_refused_and_reported(tmp_path):
    """The check below can fail: a target that tries pip and a connection is caught doing it."""
    result, out = _convert(PhoneHomeTarget, {}, tmp_path)
    assert len(result["blocked"]) == 2, result["blocked"]
    assert any("pip" in b for b in result["blocked"]) and any("192.0.2.1" in b for b in result["blocked"])
    assert (out / "model.onnx").is_file()


BUILTIN = [pytest.param("openvino", {"precision": "int8", "calibration_samples": 16}, marks=needs_openvino),
           pytest.param("openvino", {"precision": "fp16"}, marks=needs_openvino),
           pytest.param("mnn", {"precision": "fp16"}, marks=needs_mnn),
           pytest.param("mnn", {"precision": "int8"}, marks=needs_mnn),
           pytest.param("tensorrt", {"precision": "int8", "calibration_samples": 16})]


@pytest.mark.parametrize(("name", "params"), BUILTIN)
def test_builtin_conversions_never_reach_the_network_or_pip(name, params, tmp_path):
    """Every built-in conversion runs offline and tries nothing: MNN's converter is called without
    importing MNN.tools (whose import runs pip and telemetry), OpenVINO/NNCF send no telemetry."""
    target_cls = fakes().get(name)
    result, out = _convert(target_cls, params, tmp_path, calibrate=params["precision"] == "int8")
    assert result["blocked"] == []
    assert all((out / f).is_file() and (out / f).stat().st_size > 0 for f in result["files"])


def _custom_op_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["r"], name="relu"),
                               helper.make_node("Frobnicate", ["r"], ["logits"], name="frob", domain="com.example")],
                              "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                      helper.make_opsetid("com.example", 1)]), path)
    return path


@pytest.mark.parametrize("name", [pytest.param("openvino", marks=needs_openvino), pytest.param("mnn", marks=needs_mnn)])
def test_an_op_the_converter_lacks_is_named_with_its_node(name, tmp_path):
    """MNN prints "Converted Failed!" and still returns success: the missing file is what tells."""
    with pytest.raises(TargetError) as caught:
        _convert(fakes().get(name), {"precision": "fp32"}, tmp_path, _custom_op_model(tmp_path / "custom.onnx"))
    assert caught.value.nodes == (("frob", "Frobnicate"),)
    assert "node 'frob' (op Frobnicate)" in caught.value.what and name in caught.value.what
    assert not (tmp_path / "out" / "model.mnn").exists()


# --------------------------------------------------------------------------- in the pipeline


def test_targets_run_after_the_passes_and_a_failure_is_reported_beside_the_others(tmp_path):
    result = tiny_run(tmp_path, "  - shift: {precision: fp32}\n  - broken: {}\n")
    by_target = {d["target"]: d for d in result.report["deploy"]}
    good, broken = by_target["shift"], by_target["broken"]
    assert good["status"] == "passed" and good["converted_from"] == "final ONNX"
    assert good["parity"]["worst"] < 1e-5 and good["parity"]["batch_1"]["images"] == 100
    assert good["accuracy"] == pytest.approx(result.record.final.metrics.accuracy) and good["accuracy_delta"] == 0
    assert set(good["latency"]) == {"batch_1", "batch_64"}
    assert good["files"]["model.onnx"]["sha256"] and (tmp_path / "run/deploy/shift/model.onnx").is_file()
    assert broken["status"] == "conversion_failed" and broken["error"]["nodes"] == [{"name": "n0", "op": "Conv"}]
    assert not (tmp_path / "run/deploy/broken").exists()
    assert [d.target for d in result.failed_targets] == ["broken"]
    markdown = (tmp_path / "run/report.md").read_text()
    assert "## Deploy targets" in markdown and "**CONVERSION FAILED**" in markdown
    assert "Deploy targets" in (tmp_path / "run/report.html").read_text()
    again = tiny_run(tmp_path, "  - shift: {precision: fp32}\n  - broken: {}\n")
    assert {d["target"]: d["cached"] for d in again.report["deploy"]}["shift"] is True


def test_parity_beyond_the_bar_fails_unless_the_recipe_lowers_it(tmp_path):
    failed = tiny_run(tmp_path, "  - shift: {precision: fp32, shift: 0.5}\n")
    record = failed.report["deploy"][0]
    assert record["status"] == "parity_failed" and record["parity"]["worst"] == pytest.approx(0.5, abs=1e-4)
    assert "parity max_abs_diff is 0.5" in failed.failed_targets[0].problem()
    lowered = tiny_run(tmp_path, "  - shift: {precision: fp32, shift: 0.5, max_abs_diff: 0.6}\n")
    assert lowered.report["deploy"][0]["status"] == "passed" and not lowered.failed_targets


def test_cli_exits_3_naming_the_target(tmp_path, monkeypatch):
    import modelzip.target_registry as target_registry

    monkeypatch.setattr(target_registry, "_DEFAULT", fakes())
    path = tmp_path / "recipe.yaml"
    path.write_text(_RECIPE + "output: run\ndeploy:\n  - shift: {shift: 0.5}\n")
    result = CliRunner().invoke(app, ["run", str(path), "-q"])
    assert result.exit_code == EXIT_RUN_FAILED, result.output
    assert "deploy shift (fp32): parity max_abs_diff is 0.5" in result.output
    assert json.loads((tmp_path / "run/report.json").read_text())["deploy"][0]["status"] == "parity_failed"


@needs_openvino
@needs_mnn
def test_builtin_targets_after_int8_convert_from_the_float_model(tmp_path):
    """The recipe quantizes for onnxruntime; openvino int8 and mnn fp16 still convert from the float
    model (the input of the quantize pass), tensorrt writes its QDQ file and the trtexec command."""
    deploy = ("  - openvino: {precision: int8, calibration_samples: 64}\n  - mnn: {precision: fp16}\n"
              "  - tensorrt: {precision: int8, calibration_samples: 64}\n")
    result = tiny_run(tmp_path, deploy, passes="passes:\n  - quantize: {mode: static, calibration_samples: 64}\n")
    by_target = {d["target"]: d for d in result.report["deploy"]}
    assert not result.failed_targets, [d.problem() for d in result.failed_targets]
    for name in ("openvino", "mnn"):
        record = by_target[name]
        assert record["status"] == "passed"
        assert record["converted_from"] == "float ONNX (the input of passes[0].quantize)"
        assert abs(record["accuracy_delta"]) <= 0.05 and record["blocked"] == []
    assert by_target["openvino"]["details"]["inference_precision"] == "f32"
    assert sorted(by_target["openvino"]["files"]) == ["model.bin", "model.xml"]
    trt = by_target["tensorrt"]
    assert trt["status"] == "not_measured" and "trtexec --onnx=model.onnx --int8" in trt["note"]
    import onnx

    qdq = onnx.load(str(tmp_path / "run/deploy/tensorrt/model.onnx"))
    assert any(n.op_type == "DequantizeLinear" for n in qdq.graph.node)
    types = {i.data_type for i in qdq.graph.initializer if i.name.endswith("zero_point")}
    assert onnx.TensorProto.INT8 in types and onnx.TensorProto.UINT8 not in types  # int8 activations (int32: bias)


def _two_output_model(path: Path) -> Path:
    """input (N, 1, 28, 28) -> Conv -> Flatten -> two heads: "logits" (N, 4) and "embedding" (N, 8)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"w_conv": rng.standard_normal((2, 1, 3, 3)), "w_logits": rng.standard_normal((1568, 4)) * 0.05,
               "w_embed": rng.standard_normal((1568, 8)) * 0.05}
    nodes = [helper.make_node("Conv", ["input", "w_conv"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "w_logits"], ["logits"], name="head_logits"),
             helper.make_node("MatMul", ["f", "w_embed"], ["e"], name="head_embed"),
             helper.make_node("Relu", ["e"], ["embedding"], name="relu")]
    graph = helper.make_graph(
        nodes, "two_heads", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@pytest.mark.parametrize(("name", "precision", "bar"), [
    pytest.param("openvino", "fp32", 1e-4, marks=needs_openvino),
    pytest.param("openvino", "fp16", 0.05, marks=needs_openvino),
    pytest.param("mnn", "fp32", 1e-4, marks=needs_mnn),
    pytest.param("mnn", "fp16", 0.05, marks=needs_mnn)])
def test_a_two_output_model_keeps_both_outputs_with_parity_per_output(name, precision, bar, tmp_path):
    import numpy as np

    from modelzip.deploy.measure import measure_target
    from modelzip.target import Converted

    model = _two_output_model(tmp_path / "two.onnx")
    target = fakes().get(name)()
    result, out = _convert(type(target), {"precision": precision}, tmp_path, model)
    converted = Converted(tuple(result["files"]), result["details"])
    rng = np.random.default_rng(1)
    images = rng.standard_normal((40, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 4, 40)

    def batches(size):
        return ((images[i:i + size], labels[i:i + size]) for i in range(0, len(images), size))

    measured = measure_target(lambda: target.open(out, converted, 1), model, model, batches, batch_size=16,
                              input_shape=(1, 1, 28, 28), latency=None)
    for check in ("batch_1", "batch_16"):
        diffs = measured["parity"][check]["max_abs_diff"]
        assert len(diffs) == 2 and max(diffs) < bar, (check, diffs)  # both outputs, each compared


def test_tensorrt_without_tensorrt_writes_the_onnx_and_the_trtexec_command(tmp_path):
    """No TensorRT here: the float ONNX is written as it is, and the report says the engine was not
    built and how to build it (needs only the core install)."""
    from modelzip.cache import file_sha256

    result = tiny_run(tmp_path, "  - tensorrt: {precision: fp16}\n")
    record = result.report["deploy"][0]
    assert record["status"] == "not_measured" and not result.failed_targets
    assert record["note"].startswith("engine not built: the `tensorrt` package is not installed here")
    assert "trtexec --onnx=model.onnx --fp16 --minShapes=input:1x1x28x28" in record["note"]
    assert file_sha256(tmp_path / "run/deploy/tensorrt/model.onnx") == file_sha256(tmp_path / "run/model.onnx")
    assert "converted, not measured here" in (tmp_path / "run/report.md").read_text()
