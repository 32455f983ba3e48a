"""prune's ``target_macs: auto``: the bisection, its config rules, and one pass-level run."""
from __future__ import annotations

import textwrap

import pytest
from pydantic import ValidationError

from modelzip import load_recipe
from modelzip.errors import PassError, RecipeError
from modelzip.passes import _prune_search
from modelzip.passes.prune import PruneConfig, PrunePass
from modelzip.pruning.budget import Measured, search_budget
from modelzip.registry import PassRegistry
from modelzip.testing import make_context, tiny_artifact, tiny_recipe
from tests.conftest import synthetic_recipe

REFERENCE = 0.90
BUDGET = 0.01


def _search(accuracy_at, *, low=0.1, high=0.9, steps=4):
    """search_budget over a fake trial whose accuracy is ``accuracy_at(target)``; also the targets run."""
    ran: list[float] = []

    def measure(target: float) -> Measured:
        ran.append(target)
        return Measured(macs_kept=target, pruned_accuracy=0.5, accuracy=accuracy_at(target),
                        payload=f"model at {target}")

    return search_budget(measure, reference=REFERENCE, max_drop=BUDGET, low=low, high=high, steps=steps), ran


def test_monotone_bisection_finds_the_smallest_feasible_target():
    # Feasible from 0.4 up: at 0.4 the drop is exactly the budget, which counts as within it.
    search, ran = _search(lambda t: REFERENCE - max(0.0, 0.5 - t) * 0.1)
    assert ran == [0.9, 0.1, 0.5, 0.3, 0.4, 0.35]  # both ends, then 4 halvings
    assert search.chosen.target_macs == 0.4 and search.chosen.feasible
    assert [t.feasible for t in search.trials] == [True, False, True, False, True, False]
    # Only the chosen trial keeps its model; every trial is reported.
    assert [t.measured.payload for t in search.trials] == [None] * 4 + ["model at 0.4", None]
    assert search.trials[3].to_json() == {
        "target_macs": 0.3, "macs_kept": 0.3, "val_accuracy_pruned": 0.5, "val_accuracy": 0.88,
        "drop": 0.02, "feasible": False, "seconds": 0.0}


def test_non_monotone_accuracy_still_returns_a_feasible_trial():
    # Feasible above 0.6 and again in [0.2, 0.35): bisection, assuming monotony, follows the first.
    search, ran = _search(lambda t: REFERENCE if t >= 0.6 or 0.2 <= t < 0.35 else 0.8)
    assert ran == [0.9, 0.1, 0.5, 0.7, 0.6, 0.55]
    assert search.chosen.target_macs == 0.6 and search.chosen.measured.payload == "model at 0.6"


def test_all_infeasible_stops_after_the_mildest_target():
    search, ran = _search(lambda t: 0.5 + t / 10)
    assert ran == [0.9] and search.chosen is None
    assert search.best.target_macs == 0.9 and search.best.drop == pytest.approx(0.31)


def test_all_feasible_stops_at_the_lowest_target():
    search, ran = _search(lambda t: REFERENCE + 0.01)  # fine-tuning can beat the input model
    assert ran == [0.9, 0.1] and search.chosen.target_macs == 0.1
    assert search.chosen.drop == pytest.approx(-0.01)


def test_halving_stops_at_the_rounding_and_repeats_nothing():
    search, ran = _search(lambda t: REFERENCE if t >= 0.101 else 0.0, low=0.1, high=0.104, steps=10)
    assert ran == [0.104, 0.1, 0.102, 0.101] and search.chosen.target_macs == 0.101


# ----------------------------------------------------------------- config


def _registry() -> PassRegistry:
    return PassRegistry.from_entry_points()


def test_budget_keys_belong_to_target_macs_auto(recipe_file):
    passes = textwrap.indent(textwrap.dedent("""
        - prune: {method: channel, target_macs: auto}
        - prune: {method: channel, target_macs: 0.5, max_accuracy_drop: 0.01, finetune_epochs: 2}
        - prune: {method: channel, ratio: 0.5, search_steps: 3}
        - prune: {method: magnitude, sparsity: 0.5, search_range: [0.2, 0.8]}
        - prune: {method: channel, target_macs: atuo}
        - prune: {method: channel, target_macs: auto, max_acuracy_drop: 0.01}
        - prune: {method: channel, target_macs: auto, max_accuracy_drop: 0.01, search_range: [0.8, 0.2]}
        - prune: {method: channel, target_macs: 1.5}
    """).strip(), "  ")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file(synthetic_recipe(passes)), registry=_registry())
    found = {p.path: p.format() for p in info.value.problems}
    assert set(found) == {
        "passes[0].prune.max_accuracy_drop", "passes[1].prune.max_accuracy_drop",
        "passes[1].prune.finetune_epochs", "passes[2].prune.search_steps", "passes[3].prune.search_range",
        "passes[4].prune.target_macs", "passes[5].prune.max_acuracy_drop", "passes[5].prune.max_accuracy_drop",
        "passes[6].prune.search_range", "passes[7].prune.target_macs"}
    assert "target_macs: auto needs `max_accuracy_drop`" in found["passes[0].prune.max_accuracy_drop"]
    assert found["passes[1].prune.finetune_epochs"].startswith(
        "passes[1].prune.finetune_epochs (line 15): `finetune_epochs` applies only to method: channel "
        "and target_macs: auto, not target_macs: 0.5; remove it or choose target_macs: auto")
    assert "not method: magnitude" in found["passes[3].prune.search_range"]
    assert "or auto (did you mean 'auto'?)" in found["passes[4].prune.target_macs"]
    assert "did you mean 'max_accuracy_drop'?" in found["passes[5].prune.max_acuracy_drop"]
    assert "lowest < highest" in found["passes[6].prune.search_range"]
    assert "0 < t < 1" in found["passes[7].prune.target_macs"]
    assert all(p.line is not None for p in info.value.problems)


def test_auto_config_defaults_and_round_trip():
    config = PruneConfig(method="channel", target_macs="auto", max_accuracy_drop=0.01)
    assert (config.finetune_epochs, config.search_steps, config.search_range) == (1, 4, (0.1, 0.9))
    assert PruneConfig.model_validate(config.model_dump(mode="json")) == config
    # A fixed target dumps without the search's keys (an old step's cache key is unchanged).
    fixed = PruneConfig(method="channel", target_macs=0.5).model_dump()
    assert not {"max_accuracy_drop", "finetune_epochs", "search_steps", "search_range"} & set(fixed)
    with pytest.raises(ValidationError):
        PruneConfig(method="channel", target_macs="auto", max_accuracy_drop=-0.1)


# ----------------------------------------------------------------- the pass


AUTO = PruneConfig(method="channel", target_macs="auto", max_accuracy_drop=0.05, search_steps=2,
                   search_range=(0.3, 0.7))


def test_pass_prunes_and_finetunes_at_the_chosen_target():
    # An untrained tiny_cnn scores near chance and its accuracy is noise: a budget of 90 pp puts
    # both ends within it, so the lowest wins after 2 trials.
    ctx = make_context("prune", step=1)
    result = PrunePass().run(tiny_artifact(), AUTO.model_copy(update={"max_accuracy_drop": 0.9}), ctx)
    search = ctx.details["search"]
    assert search["chosen"] == 0.3 and search["within_budget"] and len(search["trials"]) == 2
    assert [t["target_macs"] for t in search["trials"]] == [0.7, 0.3]
    assert search["validation_samples"] == 32 and search["finetune_epochs"] == 1
    assert ctx.details["target_macs"] == 0.3 and ctx.details["macs_kept"] <= 0.3
    assert ctx.details["val_accuracy"] == search["trials"][1]["val_accuracy"]
    assert ctx.details["summary"].startswith("target_macs auto: chose 0.3 (val ")
    assert "after 2 trials; pruned, then fine-tuned 1 epoch" in ctx.details["summary"]
    table = ctx.details["tables"][0]
    assert table["header"] == _prune_search.TABLE_HEADER and len(table["rows"]) == 2
    assert result.module is not None and result.module.training is False


def test_over_budget_is_a_pass_error_naming_the_nearest_miss(monkeypatch):
    def measure(self, target):
        return Measured(macs_kept=target, pruned_accuracy=0.0, accuracy=0.0)

    monkeypatch.setattr(_prune_search._Trials, "measure", measure)
    with pytest.raises(PassError) as info:
        PrunePass().run(tiny_artifact(), AUTO, make_context("prune", step=2))
    error = info.value
    assert error.step == 2 and error.pass_name == "prune"
    assert "no target_macs in [0.3, 0.7]" in error.what
    assert "target_macs 0.7" in error.got and "max_accuracy_drop" in error.fix


def test_an_empty_validation_split_is_an_error_not_the_eval_split(tmp_path):
    recipe = tiny_recipe(tmp_path, overrides=["data.val_samples=0"])
    with pytest.raises(PassError) as info:
        PrunePass().run(tiny_artifact(), AUTO, make_context("prune", recipe=recipe))
    assert "validation split" in info.value.what and "data.val_samples" in info.value.fix
