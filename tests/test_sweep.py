"""`modelzip sweep`, `--emit-matrix` and `collect` (issue 17): the grid, validation before
anything runs, one shared cache, failed points, the Pareto fronts, sweep.json and sweep.html."""
from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from modelzip.cli import app
from modelzip.errors import InputError
from modelzip.sweep import parse_grid, split_values
from modelzip.sweep_points import SweepPoint, build_sweep, pareto_front
from tests.conftest import synthetic_recipe, write_recipe

runner = CliRunner()
PRUNE = "  - prune: {method: magnitude, sparsity: 0.5, recalibrate_bn: 0}\n  - export: {}\n"


def _point(name: str, accuracy: float | None, size: int | None, speedup: float | None = None,
           status: str = "passed") -> SweepPoint:
    return SweepPoint(name, name, {}, name, status, accuracy=accuracy, size_bytes=size, speedup=speedup)


# --------------------------------------------------------------------------- grid and front (no runs)


def test_values_split_on_commas_outside_brackets_and_quotes():
    assert split_values("0.1,0.5") == ["0.1", "0.5"]
    assert split_values("[1, 2],[3]") == ["[1, 2]", "[3]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]


@pytest.mark.parametrize("item, why", [("novalue", "not KEY=V1"), ("k=1,,2", "empty"), ("k=1,1", "repeated")])
def test_malformed_grid_items_are_input_errors(item, why):
    with pytest.raises(InputError, match=why):
        parse_grid([item])


def test_a_key_swept_twice_is_refused():
    with pytest.raises(InputError, match="swept twice"):
        parse_grid(["a=1", "a=2"])


def test_the_pareto_front_keeps_only_points_nothing_beats():
    points = [_point("small", 0.80, 100), _point("big", 0.90, 400), _point("dominated", 0.79, 200),
              _point("mid", 0.85, 200), _point("tie", 0.85, 200), _point("broken", None, None, status="error")]
    front = [p.name for p in pareto_front(points, lambda p: p.size_bytes)]
    assert front == ["small", "mid", "tie", "big"]  # equal points both stay; "dominated" goes
    sweep = build_sweep(points, recipe="r.yaml", grid={"k": [1]})
    marked = {p["name"]: p["pareto"]["size"] for p in sweep["points"]}
    assert marked == {"small": True, "big": True, "dominated": False, "mid": True, "tie": True, "broken": False}
    assert sweep["counts"] == {"passed": 5, "gates_failed": 0, "error": 1}
    assert sweep["pareto"]["latency"] == []  # no point measured latency


# --------------------------------------------------------------------------- the command


def test_grid_keys_and_values_are_checked_before_anything_runs(tmp_path):
    recipe = write_recipe(tmp_path, synthetic_recipe(PRUNE))
    result = runner.invoke(app, ["sweep", str(recipe), "--grid", "passes.0.prune.sparsty=0.5,0.7",
                                 "--grid", "passes.1.export.opset=17,2"])
    assert result.exit_code == 2, result.output
    assert "passes.0.prune.sparsty (from --grid)" in result.output and "sparsity" in result.output
    assert "passes.1.export.opset (from --grid)" in result.output and "'2'" in result.output
    assert not (tmp_path / "out-sweep").exists()


def test_emit_matrix_prints_one_job_per_point(tmp_path):
    recipe = write_recipe(tmp_path, synthetic_recipe(PRUNE))
    result = runner.invoke(app, ["sweep", str(recipe), "--grid", "passes.0.prune.sparsity=0.3,0.6",
                                 "--grid", "passes.1.export.opset=17,18", "--emit-matrix"])
    assert result.exit_code == 0, result.output
    matrix = json.loads(result.output)
    assert len(matrix["include"]) == 4
    first = matrix["include"][0]
    assert first["set"] == ["passes.0.prune.sparsity=0.3", "passes.1.export.opset=17"]
    assert first["command"].startswith("modelzip run ") and "--set passes.0.prune.sparsity=0.3" in first["command"]
    assert matrix["collect"].startswith("modelzip collect ")
    assert not (tmp_path / "out-sweep").exists()  # nothing ran


def test_a_sweep_runs_every_point_with_one_cache_and_draws_the_front(tmp_path):
    recipe = write_recipe(tmp_path, synthetic_recipe(PRUNE, evaluation="{warmup: 1, repeats: 5}"))
    result = runner.invoke(app, ["sweep", str(recipe), "--grid", "passes.0.prune.sparsity=0.3,0.6,0.9",
                                 "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out-sweep"
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["schema"] == "modelzip.sweep/1" and sweep["counts"]["passed"] + sweep["counts"]["gates_failed"] == 3
    assert [p["overrides"] for p in sweep["points"]] == [{"passes.0.prune.sparsity": v} for v in ("0.3", "0.6", "0.9")]
    assert sweep["pareto"]["size"]  # every point measured size
    # One cache for all points: the baseline export ran once for the three of them.
    # The baseline's export and optimize once; a prune, an export and an optimize per point.
    assert len(list((out / ".cache").glob("**/step.json"))) == 2 + 3 * 3
    page = (out / "sweep.html").read_text()
    assert page.count("<svg") == 2
    assert not re.search(r"(src|href)=[\"']?https?:|<script|<link|url\((?!#)", page)  # fetches nothing
    assert re.search(r'<a xlink:href="00-sparsity=0.3/report.(md|html)"', page)  # dots link to their runs


def test_a_failed_point_is_reported_and_the_others_still_run(tmp_path):
    # A point that fails at run time: its distillation teacher file is missing.
    body = synthetic_recipe("  - finetune: {epochs: 1, augment: none, distill: {teacher: baseline}}\n"
                            "  - export: {}\n", evaluation="{latency: false}")
    recipe = write_recipe(tmp_path, body)
    result = runner.invoke(app, ["sweep", str(recipe), "--device", "cpu", "--quiet",
                                 "--grid", "passes.0.finetune.distill.teacher=baseline,missing.pt"])
    assert result.exit_code == 3, result.output
    sweep = json.loads((tmp_path / "out-sweep" / "sweep.json").read_text())
    statuses = [p["status"] for p in sweep["points"]]
    assert statuses[1] == "error" and statuses[0] in ("passed", "gates_failed")
    assert "missing.pt" in sweep["points"][1]["error"]
    assert "did not finish" in result.output


def test_collect_builds_the_report_from_run_folders(tmp_path):
    recipe = write_recipe(tmp_path, synthetic_recipe(PRUNE, evaluation="{latency: false}"))
    folders = []
    for sparsity in ("0.3", "0.8"):
        folder = tmp_path / f"run-{sparsity}"
        result = runner.invoke(app, ["run", str(recipe), "--set", f"passes.0.prune.sparsity={sparsity}",
                                     "--out", str(folder), "--device", "cpu", "--quiet"])
        assert result.exit_code in (0, 1), result.output
        folders.append(str(folder))
    result = runner.invoke(app, ["collect", *folders, "--out", str(tmp_path / "collected")])
    assert result.exit_code == 0, result.output
    sweep = json.loads((tmp_path / "collected" / "sweep.json").read_text())
    assert sweep["grid"] == {"passes.0.prune.sparsity": [0.3, 0.8]}
    assert [p["label"] for p in sweep["points"]] == ["sparsity=0.3", "sparsity=0.8"]
    assert (tmp_path / "collected" / "sweep.html").is_file()


def test_collect_on_a_folder_without_a_report_is_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["collect", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "report.json" in result.output
