"""An fp32 ONNX file as the input model (`model.source: onnx:<file>`): ONNX passes only, no export,
keyed by the file's bytes, checked by the preflight in onnxruntime, refused clearly where it
cannot go."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from modelzip.errors import InputError, RecipeError
from modelzip.onnx_export import export_onnx
from modelzip.pipeline import RunOptions, run_recipe
from modelzip.recipe import load_recipe
from modelzip.zoo import tiny_cnn
from tests.conftest import synthetic_recipe


def write_onnx(path: Path, *, seed: int = 0, dynamic_batch: bool = True) -> Path:
    torch.manual_seed(seed)
    export_onnx(tiny_cnn(num_classes=4).eval(), (1, 1, 28, 28), path, opset=17, exporter="torchscript",
                dynamic_batch=dynamic_batch, pass_name="test", step=None)
    return path


def onnx_recipe(tmp_path: Path, passes: str = "  - quantize: {}", extra_model: str = "") -> Path:
    body = synthetic_recipe(passes, name="onnxin", model="onnx:tiny.onnx")
    body = body.replace("  args: {num_classes: 4}\n", extra_model, 1)
    path = tmp_path / "recipe.yaml"
    path.write_text(body)
    return path


def test_a_quantize_only_run_starts_from_the_file_and_keys_by_its_bytes(tmp_path):
    write_onnx(tmp_path / "tiny.onnx")
    recipe = onnx_recipe(tmp_path)
    first = run_recipe(load_recipe(recipe, ["evaluation.latency=false"])).report
    baseline = first["baseline"]
    assert baseline["export"] is None and baseline["accuracy_reference"] == "onnx"
    assert baseline["onnx"]["accuracy"] is not None and baseline["torch"]["accuracy"] is None
    assert [step["pass"] for step in first["steps"]] == ["quantize", "optimize"]
    ops = {node.op_type for node in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node}
    assert "QuantizeLinear" in ops or "DynamicQuantizeLinear" in ops
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "The input model is an ONNX file: nothing was exported." in markdown

    again = run_recipe(load_recipe(recipe, ["evaluation.latency=false"])).report
    assert all(step["cached"] for step in again["steps"]) and again["final"] == first["final"]
    write_onnx(tmp_path / "tiny.onnx", seed=1)  # other weights, same path: never the cached result
    changed = run_recipe(load_recipe(recipe, ["evaluation.latency=false"])).report
    assert not changed["steps"][0]["cached"]


def test_torch_passes_and_torch_keys_are_refused_at_validation(tmp_path):
    with pytest.raises(RecipeError) as caught:
        load_recipe(onnx_recipe(tmp_path, "  - prune: {method: magnitude, sparsity: 0.5}\n  - quantize: {}"))
    (problem,) = caught.value.problems
    assert problem.path == "passes[0].prune" and "input model is an ONNX file" in problem.message
    assert "model.source/model.checkpoint" in problem.suggestion

    with pytest.raises(RecipeError) as caught:  # quantize takes ONNX, but not in the mode that trains torch
        load_recipe(onnx_recipe(tmp_path, "  - quantize: {mode: qat}"))
    assert "'quantize' (mode qat) takes a torch model, but the input model is an ONNX file" in (
        caught.value.problems[0].message)

    with pytest.raises(RecipeError) as caught:
        load_recipe(onnx_recipe(tmp_path, extra_model="  checkpoint: tiny.pt\n"))
    assert "checkpoint applies to a torch model" in caught.value.problems[0].message

    recipe = onnx_recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace("onnx:tiny.onnx", "onnx:tiny.pt"))
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe)
    assert 'expected "onnx:<path to a .onnx file>"' in caught.value.problems[0].message


def test_a_missing_file_and_a_fixed_batch_are_input_errors(tmp_path):
    recipe = onnx_recipe(tmp_path)
    with pytest.raises(InputError) as caught:
        run_recipe(load_recipe(recipe), RunOptions())
    assert caught.value.where == "model.source" and "ONNX model file not found" in str(caught.value)

    write_onnx(tmp_path / "tiny.onnx", dynamic_batch=False)  # batch 1 only: every batched evaluation would fail
    with pytest.raises(InputError) as caught:
        run_recipe(load_recipe(recipe), RunOptions())
    assert caught.value.where == "model.source" and "index: 0 Got: 8 Expected: 1" in str(caught.value)


def test_a_cached_rerun_of_an_onnx_input_imports_nothing_heavy(tmp_path):
    from tests.test_cached_rerun import _cli

    write_onnx(tmp_path / "tiny.onnx")
    recipe = onnx_recipe(tmp_path)
    assert _cli("run", str(recipe), "--quiet", cwd=tmp_path)[1] == 0
    heavy, code, err = _cli("run", str(recipe), "--quiet", cwd=tmp_path)
    assert code == 0 and heavy == [], err
