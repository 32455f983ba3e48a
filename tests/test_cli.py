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


def test_user_text_is_never_rich_markup(recipe_file):
    """A name like `[/]` crashed the error printer (rich MarkupError, exit 1: "gate failed")."""
    for name in ("'[/]'", "'[bold red]x'", "'[link=file:///etc]x[/link]'"):
        path = recipe_file(VALID.replace("name: tiny", f"name: {name}"))
        result = runner.invoke(app, ["validate", str(path)])
        assert result.exit_code == 2, result.output
        assert name.strip("'") in result.output and "Traceback" not in result.output


def test_error_printer_cannot_raise(recipe_file, monkeypatch):
    from modelzip import cli

    def broken(exc):
        raise RuntimeError("terminal went away")

    monkeypatch.setattr(cli, "_print_failure", broken)
    result = runner.invoke(app, ["validate", str(recipe_file(BROKEN, "broken.yaml"))])
    assert result.exit_code == 2
    assert "error: " in result.output and "did you mean 'export'" in result.output


def test_hostile_files_exit_2_with_a_line(recipe_file):
    from tests.test_recipe import BILLION_LAUGHS

    cases = {"bomb.yaml": BILLION_LAUGHS.encode(), "deep.yaml": b"a: " + b"[" * 5000 + b"]" * 5000,
             "latin1.yaml": VALID.encode() + b"output: caf\xe9\n", "key.yaml": b"? [a]\n: 1\n"}
    for name, data in cases.items():
        path = recipe_file("", name)
        path.write_bytes(data)
        result = runner.invoke(app, ["validate", str(path)])
        assert result.exit_code == 2, (name, result.output)
        assert "(line " in result.output and "Traceback" not in result.output, name


def test_set_with_odd_keys_exits_2(recipe_file):
    path = str(recipe_file(VALID))
    for item in ("passes.².opset=1", "a..b=1", "=", "passes." + "9" * 5000 + ".x=1"):
        result = runner.invoke(app, ["validate", path, "--set", item])
        assert result.exit_code == 2 and "(from --set)" in result.output, item
        assert len(result.output) < 1000, item  # a 5,000-digit key is clipped


LEAN = """
import sys
from typer.testing import CliRunner
from modelzip.cli import app
runner = CliRunner()
for args in (["--help"], ["passes"], ["targets"], ["explain", "export"], ["schema"], ["validate", sys.argv[1]],
             ["compare", sys.argv[2], sys.argv[2], "--fail-on", "accuracy_drop=0"],
             ["compare", sys.argv[2], "--format", "json"], ["compare", sys.argv[2], "--format", "markdown"],
             ["sweep", "--help"], ["tune", "--help"], ["collect", "--help"]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
heavy = sorted(m for m in ("torch", "torchvision", "onnxruntime", "onnx", "numpy", "matplotlib",
                           "openvino", "nncf", "MNN", "_tools", "tensorrt", "ai_edge_litert", "litert_torch")
             if m in sys.modules)
print(",".join(heavy))
"""


def test_light_commands_do_not_import_heavy_modules(recipe_file, tmp_path):
    """`--help`, `validate`, `passes`, `explain`, `schema`, `compare` must stay fast (no torch)."""
    from tests.test_compare import make_report

    path = recipe_file(VALID)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text(json.dumps(make_report()))
    out = subprocess.run([sys.executable, "-c", LEAN, str(path), str(tmp_path / "run")], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == ""
