"""The TFLite target: litert-torch in its own venv converts the float torch model, offline;
ai-edge-litert runs the file; validate names what is missing without importing either."""
from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

from modelzip.deploy.worker import convert_offline
from modelzip.errors import RecipeError
from modelzip.recipe import parse_recipe
from modelzip.target import Converted
from modelzip.targets.tflite import PYTHON_ENV, SCRIPT, TfliteTarget, converter_python
from modelzip.testing.fixtures import _RECIPE
from tests.test_deploy import tiny_run

HAVE_TFLITE = importlib.util.find_spec("ai_edge_litert") is not None and converter_python().is_file()
# `make test` installs both (deploy-extras) and sets MODELZIP_REQUIRE_DEPLOY=1: CI cannot skip these.
needs_tflite = pytest.mark.skipif(not HAVE_TFLITE and os.environ.get("MODELZIP_REQUIRE_DEPLOY") != "1",
                                  reason="pip install 'modelzip[tflite]' && make tflite-env (make test does)")


def _two_heads():
    """A torch module with two outputs: logits (N, 4) and a ReLU embedding (N, 8)."""
    import torch
    from torch import nn

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.logits = nn.Linear(4 * 28 * 28, 4)
            self.embed = nn.Linear(4 * 28 * 28, 8)

        def forward(self, x):
            features = torch.flatten(torch.relu(self.conv(x)), 1)
            return self.logits(features), torch.relu(self.embed(features))

    torch.manual_seed(0)
    return TwoHeads().eval()


def _convert(module, precision: str, tmp_path: Path):
    """``module`` exported as the pipeline does (torch program + ONNX), converted in a worker."""
    import numpy as np
    import torch

    from modelzip.cache import StepCache
    from modelzip.deploy.program import torch_program

    onnx_path = tmp_path / "float.onnx"
    torch.onnx.export(module, (torch.zeros(1, 1, 28, 28),), onnx_path, dynamo=False, input_names=["input"],
                      dynamic_axes={"input": {0: "N"}})
    program = torch_program(StepCache(tmp_path / "cache"), "tiny", module, (1, 1, 28, 28))
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, np.random.default_rng(0).random((32, 1, 28, 28), dtype=np.float32))
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    scratch.mkdir()
    result = convert_offline(TfliteTarget, {"precision": precision}, onnx_path, (1, 1, 28, 28),
                             calibration if precision == "int8" else None, out, scratch, program=program,
                             batches=(1, 16))
    return result, out, onnx_path


def _measured(result: dict, out: Path, onnx_path: Path) -> dict:
    import numpy as np

    from modelzip.deploy.measure import measure_target

    converted = Converted(tuple(result["files"]), result["details"])
    rng = np.random.default_rng(1)
    images = rng.random((40, 1, 28, 28), dtype=np.float32)  # 40 = 2 x 16 + 8: the last batch is padded
    labels = rng.integers(0, 4, 40)

    def batches(size):
        return ((images[i:i + size], labels[i:i + size]) for i in range(0, len(images), size))

    return measure_target(lambda: TfliteTarget().open(out, converted, 1), onnx_path, onnx_path, batches,
                          batch_size=16, input_shape=(1, 1, 28, 28), latency=None)


@needs_tflite
@pytest.mark.parametrize(("precision", "bar"), [("fp32", 1e-4), ("fp16", 0.02), ("int8", None)])
def test_each_precision_converts_offline_and_matches_the_float_model(precision, bar, tmp_path):
    import torch

    from modelzip.zoo import tiny_cnn

    torch.manual_seed(0)
    result, out, onnx_path = _convert(tiny_cnn(num_classes=4).eval(), precision, tmp_path)
    assert result["blocked"] == [] and result["details"]["converter_blocked"] == []
    assert result["files"] == ["model.tflite"] and result["details"]["signatures"] == {"batch_1": 1, "batch_16": 16}
    parity = _measured(result, out, onnx_path)["parity"]
    for check in ("batch_1", "batch_16"):
        if bar is None:  # full-integer int8: the top-1 class, as the int8 parity bar measures
            assert parity[check]["agreement"] >= 0.9, parity
        else:
            assert max(parity[check]["max_abs_diff"]) < bar, parity
    if precision == "int8":
        from ai_edge_litert.interpreter import Interpreter

        details = Interpreter(model_path=str(out / "model.tflite")).get_input_details()
        assert details[0]["dtype"].__name__ == "int8"  # full-integer: the input is int8 too


@needs_tflite
def test_a_two_output_model_keeps_both_outputs_with_parity_per_output(tmp_path):
    result, out, onnx_path = _convert(_two_heads(), "fp32", tmp_path)
    assert len(result["details"]["outputs"]) == 2
    parity = _measured(result, out, onnx_path)["parity"]
    for check in ("batch_1", "batch_16"):
        diffs = parity[check]["max_abs_diff"]
        assert len(diffs) == 2 and max(diffs) < 1e-4, (check, diffs)


@needs_tflite
def test_the_converter_process_is_offline_too():
    """The converter runs in another venv's process, where modelzip's guard in the worker cannot see:
    tflite_convert.py installs the same guard there (this fails if it did not)."""
    probe = (f"import runpy, socket, subprocess\nguard = runpy.run_path({str(SCRIPT)!r})['_offline']\n"
             "with guard() as refused:\n"
             "    for attempt in (lambda: socket.create_connection(('192.0.2.1', 443), timeout=0.5),\n"
             "                    lambda: subprocess.run(['pip', '--version'])):\n"
             "        try:\n            attempt()\n        except PermissionError:\n            pass\n"
             "print(len(refused))\n")
    done = subprocess.run([str(converter_python()), "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "2", done.stdout + done.stderr


@needs_tflite
def test_after_int8_it_converts_from_the_float_torch_model_in_a_recipe(tmp_path):
    result = tiny_run(tmp_path, "  - tflite: {precision: int8, calibration_samples: 64}\n",
                      passes="passes:\n  - quantize: {mode: static, calibration_samples: 64}\n")
    record = result.report["deploy"][0]
    assert record["status"] == "passed", record
    assert record["converted_from"] == "float torch model (the input of passes[0].quantize)"
    assert (tmp_path / "run/deploy/tflite/model.tflite").is_file() and record["blocked"] == []
    assert set(record["latency"]) == {"batch_1", "batch_64"}


def test_validate_names_the_extra_when_the_converter_venv_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv(PYTHON_ENV, "/nowhere")
    with pytest.raises(RecipeError) as raised:
        parse_recipe(_RECIPE + "deploy:\n  - tflite: {precision: int8}\n", base_dir=tmp_path)
    message = str(raised.value)
    assert "litert-torch" in message and "make tflite-env" in message and "line" in message, message


def test_validate_rejects_an_unknown_precision_with_the_choices(tmp_path):
    with pytest.raises(RecipeError) as raised:
        parse_recipe(_RECIPE + "deploy:\n  - tflite: {precision: int4}\n", base_dir=tmp_path)
    assert "fp32" in str(raised.value) and "int8" in str(raised.value)



def test_a_model_torch_export_cannot_trace_is_a_target_error_not_a_crash(tmp_path):
    import torch

    from modelzip.cache import StepCache
    from modelzip.deploy.program import torch_program
    from modelzip.errors import TargetError

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x  # a branch on the data: torch.export refuses it

    with pytest.raises(TargetError) as raised:
        torch_program(StepCache(tmp_path / "cache"), "branchy", DataDependent(), (1, 1, 28, 28))
    assert "torch.export" in raised.value.what and raised.value.got
