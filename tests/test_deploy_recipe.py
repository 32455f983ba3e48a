"""`deploy:` in recipes: validated like passes (did-you-mean, YAML lines, all problems at once),
targets discovered through `modelzip.targets`, a missing runtime refused by `validate` (exit 2),
and `modelzip targets`; none of it imports a converter."""
from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from modelzip.cli import app
from modelzip.errors import PluginError, RecipeError, UnknownTargetError
from modelzip.recipe import parse_recipe
from modelzip.target_registry import TargetRegistry, default_targets
from tests.deploy_fakes import BrokenTarget, MissingTarget, ShiftTarget

runner = CliRunner()

HEAD = """\
version: 1
name: d
model: {source: "modelzip.zoo:tiny_cnn", input_shape: [1, 1, 28, 28]}
data: {dataset: fashion-mnist}
"""


def fakes() -> TargetRegistry:
    registry = TargetRegistry()
    for cls in (ShiftTarget, BrokenTarget, MissingTarget):
        registry.register(cls)
    return registry


def problems(text: str, targets: TargetRegistry | None = None) -> list:
    with pytest.raises(RecipeError) as caught:
        parse_recipe(HEAD + text, targets=targets or fakes())
    return caught.value.problems


def test_deploy_entries_parse_and_dump_back():
    recipe = parse_recipe(HEAD + "deploy:\n  - shift: {precision: fp16, max_abs_diff: 0.5}\n  - broken\n",
                          targets=fakes())
    assert [(s.target, s.config.precision) for s in recipe.deploy] == [("shift", "fp16"), ("broken", "fp32")]
    assert recipe.deploy[0].config.parity_bar() == ("max_abs_diff", 0.5)
    assert recipe.deploy[1].config.parity_bar() == ("max_abs_diff", 1e-3)
    dumped = recipe.to_data()["deploy"]
    assert dumped[0] == {"shift": {"precision": "fp16", "max_abs_diff": 0.5, "shift": 0.0}}  # min_agreement: int8 only
    import yaml

    again = parse_recipe(yaml.safe_dump(recipe.to_data()), targets=fakes())
    assert again.deploy == recipe.deploy
    assert "deploy" not in parse_recipe(HEAD, targets=fakes()).to_data()  # recipes without it dump as before


def test_every_deploy_problem_at_once_with_lines_and_suggestions():
    found = problems("deploy:\n"
                     "  - shfit: {precision: fp16}\n"          # line 6: unknown target
                     "  - shift: {precison: fp16}\n"           # line 7: unknown key
                     "  - broken: {precision: int4}\n"         # line 8: bad precision
                     "  - missing: {}\n")                      # line 9: runtime not installed
    by_path = {p.path: p for p in found}
    assert by_path["deploy[0].shfit"].line == 6 and "did you mean 'shift'" in by_path["deploy[0].shfit"].suggestion
    assert by_path["deploy[1].shift.precison"].line == 7
    assert "did you mean 'precision'" in by_path["deploy[1].shift.precison"].suggestion
    assert by_path["deploy[2].broken.precision"].line == 8 and "int4" in by_path["deploy[2].broken.precision"].message
    missing = by_path["deploy[3].missing"]
    assert missing.line == 9 and "modelzip_no_such_runtime" in missing.message
    assert "pip install modelzip-no-such-runtime" in missing.suggestion


def test_parity_bar_follows_the_precision():
    found = problems("deploy:\n  - shift: {precision: fp32, min_agreement: 0.9}\n")
    assert found[0].path == "deploy[0].shift.min_agreement" and "int8" in found[0].message
    recipe = parse_recipe(HEAD + "deploy:\n  - shift: {precision: int8, min_agreement: 0.9}\n", targets=fakes())
    assert recipe.deploy[0].config.parity_bar() == ("min_agreement", 0.9)


def test_one_entry_per_target_and_list_shape():
    found = problems("deploy:\n  - shift: {}\n  - shift: {precision: fp16}\n")
    assert found[0].path == "deploy[1].shift" and "already deploy[0]" in found[0].message
    assert problems("deploy: {shift: {}}\n")[0].path == "deploy"
    assert "one-key mapping" in problems("deploy:\n  - {shift: {}, broken: {}}\n")[0].message


def test_registry_checks_plugins_and_suggests():
    registry = fakes()
    with pytest.raises(UnknownTargetError) as caught:
        registry.get("shif")
    assert caught.value.suggestion == "shift"
    with pytest.raises(PluginError):
        registry.register(type("Bad", (ShiftTarget,), {"name": "Bad-Name"}))
    with pytest.raises(PluginError):
        registry.register(ShiftTarget.__class__("Other", (ShiftTarget,), {}))  # same name, another class


def test_builtin_targets_are_entry_points():
    registry = default_targets()
    assert {"openvino", "mnn", "tensorrt"} <= set(registry.names())
    for name in ("openvino", "mnn", "tensorrt"):
        cls = registry.get(name)
        assert cls.name == name and cls.install


def test_missing_runtime_is_exit_2_at_validate(recipe_file, monkeypatch):
    """A built-in target whose runtime is absent: validate exits 2 naming the extra to install."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    path = recipe_file(HEAD + "deploy:\n  - openvino: {precision: fp16}\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "deploy[0].openvino (line 6)" in result.output and "pip install 'modelzip[openvino]'" in result.output


def test_targets_command_lists_builtins():
    result = runner.invoke(app, ["targets"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in ("openvino", "mnn", "tensorrt"):
        assert name in result.output
    assert "engine not built" in result.output  # tensorrt converts here but never runs here


LEAN = """
import sys
from typer.testing import CliRunner
from modelzip.cli import app
runner = CliRunner()
for args in (["targets"], ["validate", sys.argv[1]], ["schema"]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
heavy = sorted(m for m in ("torch", "onnxruntime", "onnx", "numpy", "openvino", "nncf", "MNN", "_tools", "tensorrt")
               if m in sys.modules)
print(",".join(heavy))
"""


def test_validate_and_targets_import_no_converter(recipe_file):
    # tensorrt needs only the core install, so this runs wherever modelzip is installed.
    path = recipe_file(HEAD + "deploy:\n  - tensorrt: {precision: int8}\n")
    out = subprocess.run([sys.executable, "-c", LEAN, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
