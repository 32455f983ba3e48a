"""finetune's ``prune:``: magnitude pruning while training, on Zhu & Gupta's cubic schedule.

The schedule's values, exact final sparsity with zeros that stay zero, best-epoch selection
only at the final sparsity, resume, the contract, and config validation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from modelzip import load_recipe
from modelzip.errors import PassError, RecipeError
from modelzip.finetuning import loop as loop_module
from modelzip.finetuning import train as train_module
from modelzip.finetuning.checkpoint import CheckpointStore
from modelzip.passes.finetune import FinetunePass
from modelzip.pruning import PruneFailure, prunable_layers
from modelzip.pruning.gradual import GradualPruner, GradualSettings, cubic_sparsity, plan
from modelzip.registry import PassRegistry
from modelzip.testing import check_pass_contract
from modelzip.zoo import tiny_cnn
from tests.conftest import finetune_harness, synthetic_recipe

# 320 training images (384 minus 64 for validation) in batches of 64: 5 optimizer steps per epoch.
RECIPE = synthetic_recipe("  - finetune: {epochs: 3, lr: 0.05}", name="ft-prune", checkpoint="tiny.pt",
                          data_args="{train: 384, eval: 128}", val_samples=64,
                          evaluation="{latency: false}")
GRADUAL = {"method": "magnitude", "sparsity": 0.8}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    pass


@pytest.fixture
def registry():
    return PassRegistry.from_entry_points()


@pytest.fixture
def recipe_path(tiny_checkpoint, recipe_file):
    return recipe_file(RECIPE)


@pytest.fixture
def harness(recipe_path, registry):
    return finetune_harness(recipe_path, registry)


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: layer.weight for name, layer in prunable_layers(module).items()}


# --------------------------------------------------------------------------- the schedule


def test_cubic_schedule_starts_at_zero_rises_steeply_and_ends_exactly_at_the_target():
    assert cubic_sparsity(10, first=10, last=40, final=0.9) == 0.0
    assert cubic_sparsity(25, first=10, last=40, final=0.9) == pytest.approx(0.9 * (1 - 0.5 ** 3))  # 0.7875
    assert cubic_sparsity(40, first=10, last=40, final=0.9) == 0.9
    assert cubic_sparsity(99, first=10, last=40, final=0.9) == 0.9
    # 100 steps, start 0, end 0.75: four updates 75/4 steps apart, each rounded up to a step.
    points = plan(GradualSettings(sparsity=0.9, updates=4), 100)
    assert [t for t, _ in points] == [19, 38, 57, 75]
    assert points[0][1] == pytest.approx(0.9 * (1 - (1 - 19 / 75) ** 3))
    assert points[-1][1] == 0.9  # exactly the target, not 0.8999...
    values = [s for _, s in points]
    assert values == sorted(values) and values[1] - values[0] > values[3] - values[2]  # steep, then flat
    # A window shorter than the update count collapses duplicate steps; oneshot is one cut at start.
    assert plan(GradualSettings(sparsity=0.5, start=0.5, end=1.0, updates=16), 4) == [
        (3, pytest.approx(0.5 * (1 - 0.5 ** 3))), (4, 0.5)]
    assert plan(GradualSettings(sparsity=0.5, schedule="oneshot", start=0.2), 50) == [(10, 0.5)]


# --------------------------------------------------------------------------- masks


def test_masks_follow_the_schedule_and_pruned_weights_stay_zero():
    """Drive the pruner by hand between real SGD steps: after every update the covered weights
    hold exactly round(s * n) zeros, and every weight once pruned is still +0.0."""
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=4)
    pruner = GradualPruner(model, GradualSettings(sparsity=0.7, updates=3, end=1.0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    total = sum(w.numel() for w in weights(model).values())
    pruner.start(model, 0, 9)
    assert pruner.points == [(3, pytest.approx(0.7 * (1 - (2 / 3) ** 3))), (6, pytest.approx(0.7 * (1 - (1 / 3) ** 3))),
                             (9, 0.7)]
    ever_zero = {name: torch.zeros_like(w, dtype=torch.bool) for name, w in weights(model).items()}
    for step in range(1, 10):
        optimizer.zero_grad()
        model(torch.randn(8, 1, 28, 28)).pow(2).mean().backward()
        optimizer.step()
        pruner.update(step)
        zeros = sum(int((w == 0).sum()) for w in weights(model).values())
        assert zeros == round(pruner.sparsity_at(step) * total), step
        for name, w in weights(model).items():
            assert bool((w[ever_zero[name]] == 0).all()), (step, name)  # none revived
            assert not bool(torch.signbit(w[w == 0]).any())  # +0.0, never -0.0 (it zips worse)
            ever_zero[name] |= w == 0
    assert pruner.at_final(9) and not pruner.at_final(8)


def test_layer_scope_cuts_every_layer_and_ignore_keeps_one_dense():
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=4)
    pruner = GradualPruner(model, GradualSettings(sparsity=0.5, schedule="oneshot", scope="layer",
                                                  ignore=("classifier",)))
    pruner.start(model, 0, 10)
    layers = weights(model)
    for name in ("features.0", "features.4"):
        assert int((layers[name] == 0).sum()) == round(0.5 * layers[name].numel()), name
    assert int((layers["classifier.1"] == 0).sum()) == 0
    details = pruner.details(model)
    assert details["ignored"] == ["classifier.1"] and details["layer_sparsity"]["classifier.1"] == 0.0
    assert details["summary"] == "one-shot magnitude pruning to 50.0% at step 0"
    with pytest.raises(PruneFailure, match="cover no Conv/Linear layer") as info:
        GradualPruner(model, GradualSettings(sparsity=0.5, ignore=("clasifier",)))
    assert info.value.got == ["clasifier"]
    with pytest.raises(PruneFailure, match="nothing is left to prune"):
        GradualPruner(model, GradualSettings(sparsity=0.5, ignore=("features", "classifier")))


def test_finetune_reaches_the_final_sparsity_exactly_and_reports_it(harness):
    produced, ctx = harness({"epochs": 3, "lr": 0.05, "prune": GRADUAL})
    layers = weights(produced.module)
    total = sum(w.numel() for w in layers.values())
    assert sum(int((w == 0).sum()) for w in layers.values()) == round(0.8 * total)
    pruning = ctx.details["pruning"]
    # 15 steps, end 0.75: the final sparsity from step round(11.25) = 11; 16 updates collapse to 11 steps.
    assert (pruning["first_step"], pruning["final_step"], pruning["sparsity"]) == (0, 11, pytest.approx(0.8, abs=1e-3))
    assert pruning["mask_updates"][-1] == [11, 0.8] and len(pruning["mask_updates"]) == 11
    assert set(ctx.details["layer_sparsity"]) == {"features.0", "features.4", "classifier.1"}
    assert "gradual magnitude pruning 0 -> 80.0% over steps 0..11 (11 mask updates)" in ctx.details["summary"]
    assert ctx.details["sparsity_preserved"]["masked_tensors"] == 0  # the input arrived dense


def test_best_epoch_is_chosen_only_at_the_final_sparsity(harness, monkeypatch):
    # 6 epochs of 5 steps, end 0.5: the final sparsity from step 15, the end of epoch 3.
    scripted = iter([0.99, 0.98, 0.60, 0.70, 0.65, 0.90])  # the denser epochs 1-2 validate best: they must not win
    monkeypatch.setattr(loop_module, "torch_accuracy", lambda model, batches: next(scripted))
    snapshots = {}
    real_fit = train_module.fit

    def fit_with_snapshots(model, data, settings, objective=None, hooks=None, runtime=None):
        hooks.on_epoch_end = lambda record: snapshots.update(
            {record["epoch"]: {k: v.clone() for k, v in model.state_dict().items()}})
        return real_fit(model, data, settings, objective, hooks, runtime)

    monkeypatch.setattr(train_module, "fit", fit_with_snapshots)
    produced, ctx = harness({"epochs": 6, "lr": 0.05, "patience": 1, "prune": {**GRADUAL, "end": 0.5}})
    assert ctx.details["best_epoch"] == 4 and ctx.details["best_val_accuracy"] == 0.70
    assert ctx.details["stopped_early"] and ctx.details["epochs_run"] == 5  # patience counts from epoch 4
    state = produced.module.state_dict()
    assert all(torch.equal(state[k], snapshots[4][k]) for k in state)  # epoch 4's weights, at 80%
    assert ctx.details["pruning"]["sparsity"] == pytest.approx(0.8, abs=1e-3)


def test_interrupted_gradual_finetune_resumes_to_the_same_weights(harness, tmp_path, monkeypatch):
    params = {"epochs": 3, "lr": 0.05, "prune": GRADUAL}
    real_save = CheckpointStore.save

    def save_then_interrupt(self, state):
        real_save(self, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt  # mid-ramp: step 5 of 15, sparsity rising

    monkeypatch.setattr(CheckpointStore, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        harness(params, resume_dir=tmp_path / "resume")
    resumed, ctx = harness(params, resume_dir=tmp_path / "resume")
    fresh, _ = harness(params)
    assert ctx.details["resumed_after_epoch"] == 1
    a, b = resumed.module.state_dict(), fresh.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_with_pruning_keeps_the_contract(tmp_path):
    config = FinetunePass.Config(epochs=1, prune={**GRADUAL, "schedule": "oneshot"})
    produced = check_pass_contract(FinetunePass, config, work_dir=tmp_path)
    layers = weights(produced.module)
    assert sum(int((w == 0).sum()) for w in layers.values()) == round(0.8 * sum(w.numel() for w in layers.values()))


def test_unknown_ignore_pattern_is_a_pass_error(harness):
    with pytest.raises(PassError) as info:
        harness({"epochs": 1, "prune": {**GRADUAL, "ignore": ["clasifier"]}})
    assert info.value.exit_code == 3 and info.value.where == "passes[0].finetune"
    assert "clasifier" in str(info.value.got)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("prune, path, message", [
    ("{method: magnitude, sparsity: 0.9, spars: 1}", "prune.spars", "did you mean 'sparsity'"),
    ("{method: magnitude, sparsity: 1.0}", "prune.sparsity", "less than 1"),
    ("{method: magnitude, sparsity: 0}", "prune.sparsity", "greater than 0"),
    ("{method: magnitude, sparsity: 0.9, start: 0.8}", "prune.end", "must be after `start` (0.8)"),
    ("{method: magnitude, sparsity: 0.9, start: 0.5, end: 0.5}", "prune.end", "must be after"),
    ("{method: magnitude, sparsity: 0.9, schedule: oneshot, end: 0.5}", "prune.end", "schedule: gradual"),
    ("{method: channel, sparsity: 0.9}", "prune.method", "'magnitude'"),
    ("{sparsity: 0.9}", "prune.method", "required"),
])
def test_config_errors_name_the_key(recipe_path, registry, prune, path, message):
    recipe_path.write_text(recipe_path.read_text().replace("{epochs: 3, lr: 0.05}", f"{{prune: {prune}}}"))
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_path, registry=registry)
    (problem,) = info.value.problems
    assert problem.path == f"passes[0].finetune.{path}" and message in problem.format() and problem.line == 15


def test_prune_is_left_out_of_params_when_unset():
    """Recipes without `prune:` dump (and so key their cached steps) exactly as before."""
    assert "prune" not in FinetunePass.Config().model_dump(mode="json")
    dumped = FinetunePass.Config(prune=GRADUAL).model_dump(mode="json")["prune"]
    assert dumped == {"method": "magnitude", "sparsity": 0.8, "schedule": "gradual", "scope": "lamp",
                      "ignore": [], "start": 0.0, "end": 0.75, "updates": 16}
    assert FinetunePass.Config.model_validate({"prune": dumped}).prune == FinetunePass.Config(prune=GRADUAL).prune
