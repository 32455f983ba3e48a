"""A fully cached rerun is instant: it imports neither torch nor onnxruntime (issue 18),
and still notices every change a cache key covers."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelzip import artifacts as art
from modelzip import load_recipe, run_recipe
from modelzip.console import SilentUI
from modelzip.errors import ModelzipError
from modelzip.pipeline import RunOptions
from modelzip.sources.identity import defining_file, model_fingerprint
from tests.conftest import synthetic_recipe, write_recipe

HEAVY = ("torch", "torchvision", "onnxruntime", "onnx", "numpy")

# Runs the CLI in this process and prints the heavy modules it imported.
CLI_IMPORTS = f"""
import sys
from modelzip.cli import main
sys.argv = ["modelzip", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("HEAVY=" + ",".join(m for m in {HEAVY!r} if m in sys.modules), "EXIT=" + str(code))
"""

# A pruned torch model between the input and the export: a lazy torch artifact in the chain.
PASSES = "  - prune: {method: magnitude, sparsity: 0.5}\n  - export: {}\n"


def _cli(*args: str, cwd: Path) -> tuple[list[str], int, str]:
    done = subprocess.run([sys.executable, "-c", CLI_IMPORTS, *args], capture_output=True, text=True, cwd=cwd)
    last = done.stdout.strip().splitlines()[-1]
    heavy, code = last.split(" ")
    return [m for m in heavy.removeprefix("HEAVY=").split(",") if m], int(code.removeprefix("EXIT=")), done.stderr


def _comparable(report: dict) -> dict:
    """report.json without what a rerun changes: wall times and whether a step was cached."""
    drop = {"wall_time_s", "cached", "run_time_s"}

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in drop}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(report)


def test_a_fully_cached_rerun_imports_neither_torch_nor_onnxruntime(tmp_path):
    recipe = write_recipe(tmp_path, synthetic_recipe(PASSES))
    heavy, code, err = _cli("run", str(recipe), "--quiet", "--device", "cpu", cwd=tmp_path)
    assert code == 0, err
    assert "torch" in heavy  # the first run did the work
    first = json.loads((tmp_path / "out" / "report.json").read_text())

    heavy, code, err = _cli("run", str(recipe), "--quiet", "--device", "cpu", cwd=tmp_path)
    assert code == 0, err
    assert heavy == []
    second = json.loads((tmp_path / "out" / "report.json").read_text())
    assert all(step["cached"] for step in second["steps"])
    assert _comparable(second) == _comparable(first)


def test_a_changed_parameter_reruns_from_the_cached_parent(tmp_path):
    """The export reruns on the pruned model, which loads from the cache only now."""
    recipe = write_recipe(tmp_path, synthetic_recipe(PASSES, evaluation="{latency: false}"))
    options = RunOptions(ui=SilentUI(), device="cpu")
    run_recipe(load_recipe(recipe), options)
    report = run_recipe(load_recipe(recipe, ["passes.1.export.opset=17"]), options).report
    assert [s["cached"] for s in report["steps"]] == [True, False, False]  # prune, export, optimize


def test_a_cached_model_that_no_longer_loads_is_removed_and_reported(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path, synthetic_recipe(PASSES, evaluation="{latency: false}"))
    options = RunOptions(ui=SilentUI(), device="cpu")
    run_recipe(load_recipe(recipe), options)

    def broken(directory, build_module):
        raise RuntimeError("size mismatch for conv.weight")

    monkeypatch.setattr(art, "load_module", broken)
    with pytest.raises(ModelzipError, match="could not be loaded") as caught:
        run_recipe(load_recipe(recipe, ["passes.1.export.opset=17"]), options)
    assert "run again" in caught.value.format()
    monkeypatch.undo()
    report = run_recipe(load_recipe(recipe, ["passes.1.export.opset=17"]), options).report
    assert [s["cached"] for s in report["steps"]] == [False, False, False]  # the broken entry was removed


# --------------------------------------------------------------------------- which file defines a factory


class DictMemo:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def recall(self, token: str) -> str | None:
        return self.values.get(token)

    def remember(self, token: str, value: str) -> None:
        self.values[token] = value


def _write(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))


def test_a_re_exported_factory_is_keyed_by_the_file_that_defines_it(tmp_path):
    """`facade:make` re-exports `impl.make`: editing impl.py must change the model's id."""
    _write(tmp_path / "impl_a1.py", "def make():\n    return 1\n")
    _write(tmp_path / "facade_a1.py", "from impl_a1 import make  # noqa\n")
    memo = DictMemo()
    found = defining_file("facade_a1:make", tmp_path, what="model", where="model.source", memo=memo)
    assert found == tmp_path / "impl_a1.py"
    assert list(memo.values.values()) == [str(tmp_path / "impl_a1.py")]

    # Recalled without importing: a module that would fail to import is never run.
    sys.modules.pop("facade_a1", None)
    sys.modules.pop("impl_a1", None)
    _write(tmp_path / "impl_a1.py", "raise SystemExit('imported')\ndef make():\n    return 2\n")
    assert defining_file("facade_a1:make", tmp_path, what="model", where="model.source", memo=memo) == found
    assert "facade_a1" not in sys.modules


def test_an_edited_named_module_is_imported_again(tmp_path):
    _write(tmp_path / "impl_b1.py", "def make():\n    return 1\n")
    _write(tmp_path / "impl_b2.py", "def make():\n    return 2\n")
    _write(tmp_path / "facade_b1.py", "from impl_b1 import make  # noqa\n")
    memo = DictMemo()
    defining_file("facade_b1:make", tmp_path, what="model", where="model.source", memo=memo)
    sys.modules.pop("facade_b1", None)
    _write(tmp_path / "facade_b1.py", "from impl_b2 import make  # noqa\n")
    assert defining_file("facade_b1:make", tmp_path, what="model", where="model.source",
                         memo=memo) == tmp_path / "impl_b2.py"


def test_the_model_id_follows_the_defining_file_when_recalled(tmp_path):
    from modelzip.recipe import ModelSpec

    _write(tmp_path / "impl_c1.py", "import torch.nn as nn\ndef make():\n    return nn.Linear(2, 2)\n")
    _write(tmp_path / "facade_c1.py", "from impl_c1 import make  # noqa\n")
    spec = ModelSpec(source="facade_c1:make", input_shape=(1, 2))
    memo = DictMemo()
    first = model_fingerprint(spec, tmp_path, memo)
    assert model_fingerprint(spec, tmp_path, memo) == first
    _write(tmp_path / "impl_c1.py", "import torch.nn as nn\ndef make():\n    return nn.Linear(2, 3)\n")
    assert model_fingerprint(spec, tmp_path, memo) != first


# --------------------------------------------------------------------------- device and environment


def test_auto_device_asks_torch_only_where_a_gpu_driver_is_present(monkeypatch):
    from modelzip import envinfo, pipeline

    def must_not_ask():
        raise AssertionError("torch was asked about CUDA on a machine without a GPU driver")

    monkeypatch.setattr(envinfo, "cuda_possible", lambda: False)
    monkeypatch.setattr(pipeline, "_torch_sees_cuda", must_not_ask)
    assert pipeline.resolve_device("auto") == "cpu"
    monkeypatch.setattr(envinfo, "cuda_possible", lambda: True)
    monkeypatch.setattr(pipeline, "_torch_sees_cuda", lambda: False)
    assert pipeline.resolve_device("auto") == "cpu"


def test_onnxruntime_providers_are_remembered_per_installed_version():
    from modelzip.envinfo import ort_providers

    memo = DictMemo()
    asked = ort_providers(memo)
    assert "CPUExecutionProvider" in asked
    [token] = memo.values
    assert token.startswith("ort_providers|onnxruntime==")
    memo.values[token] = json.dumps(["Remembered"])
    assert ort_providers(memo) == ["Remembered"]
