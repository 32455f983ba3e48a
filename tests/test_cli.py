"""The CLI: exit codes, light imports, and the commands that never load a model."""
from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from modelzip.cli import app
from tests.test_recipe import BROKEN, VALID

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("modelzip ")


def test_validate_ok_and_broken(recipe_file):
    ok = runner.invoke(app, ["validate", str(recipe_file(VALID))])
    assert ok.exit_code == 0, ok.output
    assert "valid (1 passes: export)" in ok.stdout
    bad = runner.invoke(app, ["validate", str(recipe_file(BROKEN, "broken.yaml"))])
    assert bad.exit_code == 2
    for fragment in ("line 6", "line 9", "line 11", "did you mean 'export'", "did you mean 'checkpoint'"):
        assert fragment in bad.output
    assert "Traceback" not in bad.output


def test_validate_with_set_override(recipe_file):
    path = str(recipe_file(VALID))
    assert runner.invoke(app, ["validate", path, "--set", "passes.0.export.opset=19"]).exit_code == 0
    result = runner.invoke(app, ["validate", path, "--set", "passes.0.export.opst=19"])
    assert result.exit_code == 2 and "(from --set)" in result.output


def test_missing_recipe_exits_2(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "recipe file not found" in result.output


def test_usage_error_exits_2():
    assert runner.invoke(app, ["run"]).exit_code == 2
    assert runner.invoke(app, ["frobnicate"]).exit_code == 2


def test_explain_and_passes():
    result = runner.invoke(app, ["explain", "export"])
    assert result.exit_code == 0 and "opset" in result.stdout and "parity_atol" in result.stdout
    unknown = runner.invoke(app, ["explain", "exprt"])
    assert unknown.exit_code == 2 and "did you mean 'export'" in unknown.output
    assert "export" in runner.invoke(app, ["passes"]).stdout


def test_schema_is_json():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["title"] == "modelzip recipe"


LEAN = """
import sys
from typer.testing import CliRunner
from modelzip.cli import app
runner = CliRunner()
for args in (["--help"], ["passes"], ["explain", "export"], ["schema"], ["validate", sys.argv[1]]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
heavy = sorted(m for m in ("torch", "torchvision", "onnxruntime", "onnx", "numpy") if m in sys.modules)
print(",".join(heavy))
"""


def test_light_commands_do_not_import_heavy_modules(recipe_file):
    """`--help`, `validate`, `passes`, `explain`, `schema` must stay fast (no torch)."""
    path = recipe_file(VALID)
    out = subprocess.run([sys.executable, "-c", LEAN, str(path)], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""
