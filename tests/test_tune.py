"""`modelzip tune` (issue 17): knobs, bisection, the winner run in full, tuned.yaml."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelzip.cli import app
from modelzip.errors import InputError
from modelzip.recipe import load_recipe
from modelzip.sweep_points import SweepPoint
from modelzip.tune import KINDS, Knob, Trial, _values, best_within, boldest_within, knobs_of, search, write_tuned
from tests.conftest import synthetic_recipe, write_recipe

runner = CliRunner()
MAGNITUDE = "  - prune: {method: magnitude, sparsity: 0.5, recalibrate_bn: 0}\n  - export: {}\n"


@pytest.mark.parametrize("count, last_good", [(1, 0), (1, None), (10, 0), (10, 9), (10, None), (94, 60), (94, 1)])
def test_bisection_finds_the_boldest_value_within_the_budget_in_log_calls(count, last_good):
    calls = []

    def within(i):
        calls.append(i)
        return last_good is not None and i <= last_good

    assert boldest_within(count, within) == last_good
    assert len(calls) <= math.ceil(math.log2(count + 1))


def test_knob_values_run_from_the_safest_to_the_boldest():
    sparsity = _values(KINDS[("prune", "sparsity")], 0.05, 0.98)
    assert (sparsity[0], sparsity[-1], len(sparsity)) == (0.05, 0.98, 94)
    macs = _values(KINDS[("prune", "target_macs")], 0.1, 0.95)
    assert (macs[0], macs[-1]) == (0.95, 0.1)
    assert _values(KINDS[("quantize", "bits")], 4, 8) == (8, 4)


def test_the_recipe_s_compression_strength_is_the_default_knob(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, synthetic_recipe(MAGNITUDE)))
    [knob] = knobs_of(recipe, (), objective="size")
    assert knob.key == "passes.0.prune.sparsity" and knob.values[-1] == 0.98
    with pytest.raises(InputError, match="no compression strength"):  # sparse weights do not make it faster
        knobs_of(recipe, (), objective="latency")
    [narrow] = knobs_of(recipe, ["passes.0.prune.sparsity=0.9..0.6"], objective="size")
    assert narrow.values == (0.6, 0.61, 0.62, 0.63, 0.64, 0.65, 0.66, 0.67, 0.68, 0.69, 0.7, 0.71, 0.72, 0.73, 0.74,
                             0.75, 0.76, 0.77, 0.78, 0.79, 0.8, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87, 0.88, 0.89,
                             0.9)


@pytest.mark.parametrize("item, why", [("passes.0.export.opset=1..2", "does not know"),
                                       ("passes.0.prune.sparsity=a..b", "two numbers"),
                                       ("passes.0.prune.sparsity=0.5", "KEY=LOW..HIGH")])
def test_bad_over_items_are_input_errors(tmp_path, item, why):
    recipe = load_recipe(write_recipe(tmp_path, synthetic_recipe(MAGNITUDE)))
    with pytest.raises(InputError, match=why):
        knobs_of(recipe, [item], objective="size")


def test_the_search_tunes_each_knob_given_the_ones_before_and_never_repeats_a_point():
    knobs = [Knob("a", (0.1, 0.2, 0.3, 0.4, 0.5), current=0.2), Knob("b", (1, 2, 3), current=1)]

    def evaluate(overrides):  # within budget while a + b / 10 <= 0.45
        assert set(overrides) == {"a", "b"}
        ok = overrides["a"] + overrides["b"] / 10 <= 0.45
        point = SweepPoint("p", "p", overrides, "p", "passed", accuracy=0.9, accuracy_delta=0.0 if ok else -0.1,
                           size_bytes=100, zip_bytes=int(1000 - 100 * overrides["a"] - 10 * overrides["b"]))
        return Trial(point, ok)

    result = search(knobs, evaluate)
    assert result.chosen == {"a": 0.3, "b": 1}
    tried = [tuple(sorted(t.point.overrides.items())) for t in result.trials]
    assert len(tried) == len(set(tried))
    assert best_within(result.trials, "size").point.overrides == {"a": 0.3, "b": 1}


def test_tune_writes_the_winning_recipe_and_every_point_tried(tmp_path):
    recipe = write_recipe(tmp_path, synthetic_recipe(MAGNITUDE, checkpoint="tiny.pt"))
    import torch

    from modelzip.zoo import tiny_cnn

    torch.manual_seed(0)
    torch.save(tiny_cnn(num_classes=4).state_dict(), tmp_path / "tiny.pt")
    # A speed gate: the search runs (no latency) drop it, the final run checks it.
    result = runner.invoke(app, ["tune", str(recipe), "--max-accuracy-drop", "1", "--device", "cpu", "--quiet",
                                 "--over", "passes.0.prune.sparsity=0.5..0.6", "--set", "gates.min_speedup=0.01"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out-tune"
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["tune"]["chosen"] == {"passes.0.prune.sparsity": 0.6}  # everything is within a budget of 1
    assert sweep["tune"]["within_budget"] and sweep["tune"]["final"] == "final"
    assert len(sweep["points"]) <= 5  # log2(11) probes + the final run
    tuned = load_recipe(out / "tuned.yaml")  # a valid recipe, runnable from where it is
    assert tuned.passes[0].config.sparsity == 0.6
    assert tuned.model.checkpoint == str(tmp_path / "tiny.pt")
    # The final run is the proxy's winner with latency: its steps came from the shared cache.
    final = json.loads((out / "final" / "report.json").read_text())
    assert all(step["cached"] for step in final["steps"]) and final["final"]["latency"] is not None
    assert [g["name"] for g in final["gates"]] == ["min_speedup"] and sweep["tune"]["proxy"] == [
        "deploy=[]", "evaluation.latency=false", "gates.min_speedup=null"]


def test_a_knob_the_schema_refuses_is_exit_2_before_anything_runs(tmp_path):
    recipe = write_recipe(tmp_path, synthetic_recipe(MAGNITUDE))
    result = runner.invoke(app, ["tune", str(recipe), "--max-accuracy-drop", "0.01",
                                 "--over", "passes.0.prune.sparsity=0.5..1.5"])
    assert result.exit_code == 2, result.output
    assert "passes.0.prune.sparsity (from --grid)" in result.output
    assert not (tmp_path / "out-tune").exists()


def test_tuned_yaml_paths_are_absolute_when_the_recipe_was_named_by_a_relative_path(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    write_recipe(tmp_path / "recipes", synthetic_recipe(MAGNITUDE, checkpoint="../tiny.pt"))
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(Path("recipes") / "recipe.yaml")
    write_tuned(tmp_path / "elsewhere" / "tuned.yaml", recipe, {}, objective="size", max_drop=0.01)
    tuned = load_recipe(tmp_path / "elsewhere" / "tuned.yaml")
    assert tuned.model.checkpoint == str(tmp_path / "tiny.pt")
    assert Path(tuned.output).is_absolute()
