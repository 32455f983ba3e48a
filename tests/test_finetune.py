"""The finetune pass and the training loop: learning, determinism, kept zeros, distillation,
early stopping on the validation split, NaN detection, resume, and config validation."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from modelzip import load_recipe, run_recipe
from modelzip.artifacts import Artifact
from modelzip.errors import InputError, PassError, RecipeError
from modelzip.evaluation.accuracy import torch_accuracy
from modelzip.finetuning import Augment, NonFiniteLoss, TrainSettings, distillation_loss, fit
from modelzip.finetuning import distill as distill_module
from modelzip.finetuning import loop as loop_module
from modelzip.finetuning import train as train_module
from modelzip.finetuning.augment import auto_augment
from modelzip.finetuning.checkpoint import CheckpointStore
from modelzip.finetuning.optim import LrShape, warmup_steps
from modelzip.passes.finetune import FinetunePass
from modelzip.pipeline import RunOptions
from modelzip.registry import PassRegistry
from modelzip.sources.data import load_data
from modelzip.zoo import fashion_cnn, tiny_cnn
from tests.conftest import REPO, finetune_harness, needs_fashion, pass_context, synthetic_recipe

RECIPE = synthetic_recipe("  - finetune: {epochs: 3, lr: 0.05}", name="ft", checkpoint="tiny.pt",
                          data_args="{train: 384, eval: 128}", val_samples=64,
                          evaluation="{latency: false}")


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


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- learning


def test_finetune_learns_and_records_the_curve(harness):
    before = torch_accuracy(harness.baseline.module, harness.bundle.batches("eval"))
    produced, ctx = harness({"epochs": 3, "lr": 0.05, "augment": "auto"})
    after = torch_accuracy(produced.module, harness.bundle.batches("eval"))
    curve = ctx.details["curve"]
    assert [r["epoch"] for r in curve] == [1, 2, 3]
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert after > before + 0.2 and after > 0.8  # 4 classes: chance is 0.25
    assert all(r["samples_per_s"] > 0 and r["seconds"] > 0 for r in curve)
    assert ctx.details["distilled"] is False and ctx.details["best_epoch"] in (1, 2, 3)
    assert ctx.details["augment"] == "none"  # a <module>:<callable> dataset gets no auto augmentation
    assert "3 epochs sgd lr 0.05 cosine" in ctx.details["summary"]
    assert produced.module is not harness.baseline.module and not produced.module.training


def test_same_seed_gives_identical_weights(harness):
    first, _ = harness({"epochs": 2, "lr": 0.05})
    second, _ = harness({"epochs": 2, "lr": 0.05})
    assert states_equal(first.module, second.module)
    assert not states_equal(first.module, harness.baseline.module)


def test_steps_cut_the_last_epoch(harness):
    _, ctx = harness({"steps": 7, "lr": 0.05})  # 320 train images / 64 = 5 batches per epoch
    assert ctx.details["optimizer_steps"] == 7 and ctx.details["epochs_run"] == 2


def test_adamw_onecycle_clipping_and_smoothing_train(harness):
    produced, ctx = harness({"epochs": 2, "optimizer": "adamw", "lr": 0.01, "schedule": "onecycle", "grad_clip": 1.0,
                             "label_smoothing": 0.1, "batch_size": 32})
    curve = ctx.details["curve"]
    assert ctx.details["optimizer_steps"] == 20 and curve[-1]["loss"] < curve[0]["loss"]
    assert curve[-1]["lr"] < 0.02 * 0.01  # onecycle decays towards lr / 25 / 1e4
    assert torch_accuracy(produced.module, harness.bundle.batches("eval")) > 0.5


def test_lr_schedules_follow_their_shapes():
    cosine, constant, onecycle = (LrShape(kind, 100, warmup_steps(kind, warmup, 100)) for kind, warmup in
                                  [("cosine", None), ("constant", 0.1), ("onecycle", None)])
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5, abs=0.02) and cosine(99) < 0.001
    assert [constant(i) for i in (0, 9, 10, 99)] == pytest.approx([0.1, 1.0, 1.0, 1.0])
    assert onecycle(0) == pytest.approx(1 / 25 + (1 - 1 / 25) / 30)  # warmup 0.3 of 100 steps
    assert onecycle(29) == pytest.approx(1.0) and onecycle(99) < 1e-3


def test_exact_zeros_stay_zero(harness):
    torch.manual_seed(3)
    sparse = tiny_cnn(num_classes=4)
    with torch.no_grad():
        for module in sparse.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.mul_((torch.rand_like(module.weight) > 0.5).float())
    zeros = {n: p == 0 for n, p in sparse.named_parameters() if n.endswith("weight") and p.dim() > 1}
    artifact = Artifact(kind="torch", input_shape=(1, 1, 28, 28), id="sparse", module=sparse)
    produced, ctx = harness({"epochs": 2, "lr": 0.05, "weight_decay": 1e-3}, artifact=artifact)
    tuned = dict(produced.module.named_parameters())
    for name, was_zero in zeros.items():
        assert torch.equal(tuned[name] == 0, was_zero), name  # none revived, none newly zeroed
        assert not torch.signbit(tuned[name][was_zero]).any(), name  # +0.0, never -0.0 (it zips worse)
    kept = ctx.details["sparsity_preserved"]
    assert kept["masked_tensors"] == 3 and kept["zeros_kept"] and 0.4 < kept["zero_fraction"] < 0.6
    assert "zeros kept in 3 tensors" in ctx.details["summary"]


# --------------------------------------------------------------------------- distillation


def test_distillation_loss_matches_a_hand_computation():
    student = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [-2.0, 0.5, 2.5]])
    labels = torch.tensor([0, 2])
    alpha, t = 0.7, 2.0

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    kl = ce = 0.0
    for s_row, t_row, label in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        p_s, p_t = softmax([v / t for v in s_row]), softmax([v / t for v in t_row])
        kl += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s)) / 2  # batch mean
        ce += -math.log(softmax(s_row)[label]) / 2
    expected = alpha * t * t * kl + (1 - alpha) * ce
    got = distillation_loss(student, teacher, labels, alpha=alpha, temperature=t)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    plain = distillation_loss(student, teacher, labels, alpha=0.0, temperature=t)
    assert plain.item() == pytest.approx(ce, rel=1e-6)
    same = distillation_loss(teacher, teacher, labels, alpha=1.0, temperature=t)
    assert same.item() == pytest.approx(0.0, abs=1e-6)  # a student equal to its teacher pays nothing


@pytest.fixture
def seen_teachers(monkeypatch):
    seen = []
    original = distill_module.Distillation

    def spy(teacher, **kwargs):
        seen.append(teacher)
        return original(teacher, **kwargs)

    monkeypatch.setattr(distill_module, "Distillation", spy)
    return seen


def test_teacher_baseline_and_input(harness, seen_teachers):
    torch.manual_seed(5)
    entering = Artifact(kind="torch", input_shape=(1, 1, 28, 28), id="in", module=tiny_cnn(num_classes=4))
    frozen = {k: v.clone() for k, v in harness.baseline.module.state_dict().items()}
    _, ctx = harness({"epochs": 1, "distill": {}}, artifact=entering)  # teacher: baseline by default
    harness({"epochs": 1, "distill": {"teacher": "input", "alpha": 0.9, "temperature": 2}}, artifact=entering)
    assert seen_teachers == [harness.baseline.module, entering.module]
    assert ctx.details["distilled"] and ctx.details["distill"]["teacher"] == "baseline"
    assert "distilled from baseline (alpha 0.5, T 4)" in ctx.details["summary"]
    # The teacher ran from a frozen copy: the baseline module is untouched and still trainable.
    base = harness.baseline.module
    assert all(torch.equal(v, frozen[k]) for k, v in base.state_dict().items())
    assert all(p.requires_grad for p in base.parameters()) and not base.training


def test_teacher_from_a_checkpoint_path(harness, seen_teachers, tmp_path):
    torch.manual_seed(9)
    teacher = tiny_cnn(num_classes=4)
    (tmp_path / "teachers").mkdir()
    torch.save(teacher.state_dict(), tmp_path / "teachers" / "t.pt")
    harness({"epochs": 1, "distill": {"teacher": "teachers/t.pt"}})  # relative to the recipe
    assert states_equal(seen_teachers[0], teacher)
    with pytest.raises(InputError) as info:
        harness({"epochs": 1, "distill": {"teacher": "teachers/missing.pt"}})
    assert info.value.where == "passes[0].finetune.distill.teacher" and info.value.exit_code == 2
    torch.save(tiny_cnn(num_classes=7).state_dict(), tmp_path / "teachers" / "wrong.pt")
    with pytest.raises(InputError, match="does not fit") as info:
        harness({"epochs": 1, "distill": {"teacher": "teachers/wrong.pt"}})
    assert "classifier.1.weight" in str(info.value.got)


# --------------------------------------------------------------------------- selection, failures


def test_early_stopping_keeps_the_best_validation_epoch(harness, monkeypatch):
    scripted = iter([0.50, 0.70, 0.60, 0.65, 0.90, 0.95])
    monkeypatch.setattr(loop_module, "torch_accuracy", lambda model, batches: next(scripted))
    splits = []
    original = harness.bundle.batches
    monkeypatch.setattr(harness.bundle, "batches",
                        lambda split, *a, **k: splits.append(split) or original(split, *a, **k))
    snapshots = {}
    real_fit = loop_module.fit

    def fit_with_snapshots(model, data, settings, objective=None, hooks=None, runtime=None):
        hooks.on_epoch_end = lambda record: snapshots.update(
            {record["epoch"]: {k: v.clone() for k, v in model.state_dict().items()}})
        return real_fit(model, data, settings, objective, hooks, runtime)

    monkeypatch.setattr(train_module, "fit", fit_with_snapshots)
    produced, ctx = harness({"epochs": 6, "lr": 0.05, "patience": 2})
    assert ctx.details["epochs_run"] == 4 and ctx.details["stopped_early"]  # no gain in epochs 3, 4
    assert ctx.details["best_epoch"] == 2 and ctx.details["best_val_accuracy"] == 0.70
    state = produced.module.state_dict()
    assert all(torch.equal(state[k], snapshots[2][k]) for k in state)
    assert not all(torch.equal(state[k], snapshots[4][k]) for k in state)
    assert "validation" in splits and "eval" not in splits  # selection never peeks at eval


def test_non_finite_loss_names_the_step_and_lr(harness):
    with pytest.raises(PassError) as info:
        harness({"epochs": 2, "lr": 1e6, "schedule": "constant"})
    error, cause = info.value, info.value.__cause__
    assert isinstance(cause, NonFiniteLoss) and error.exit_code == 3 and error.step == 0
    assert cause.epoch == 1 and cause.iteration >= 1 and cause.lr == pytest.approx(1e6)
    assert f"epoch 1, iteration {cause.iteration}" in error.what and "learning rate 1e+06" in error.what
    assert "lower lr" in error.fix and "grad_clip" in error.fix


def test_nan_from_the_model_is_caught_at_its_iteration():
    class NanAfter(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.calls = nn.Linear(4, 2), 0

        def forward(self, x):
            self.calls += 1
            out = self.linear(x.flatten(1)[:, :4])
            return out * float("nan") if self.calls == 20 else out

    from modelzip.sources.data import DataBundle, InMemoryDataset

    images, labels = torch.randn(640, 1, 2, 2), torch.randint(0, 2, (640,))
    data = InMemoryDataset(images, labels)
    bundle = DataBundle(train=data, validation=data.subset(torch.arange(0)), eval=data,
                        sample_shape=(1, 2, 2), num_classes=2, batch_size=32, seed=0)
    with pytest.raises(NonFiniteLoss) as info:  # 20 batches per epoch: the 20th call is the last one
        fit(NanAfter(), bundle, TrainSettings(epochs=2, lr=0.1, schedule="constant"))
    assert (info.value.epoch, info.value.iteration, info.value.step) == (1, 20, 20)


def test_interrupted_finetune_resumes_and_matches_an_uninterrupted_run(recipe_path, registry, monkeypatch):
    options = RunOptions(registry=registry)
    real_save = CheckpointStore.save

    def save_then_interrupt(self, state):
        real_save(self, state)
        raise KeyboardInterrupt  # as if Ctrl-C arrived right after epoch 1 was checkpointed

    monkeypatch.setattr(CheckpointStore, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(recipe_path, registry=registry), options)
    monkeypatch.setattr(CheckpointStore, "save", real_save)
    resumed = run_recipe(load_recipe(recipe_path, registry=registry), options)
    fresh = run_recipe(load_recipe(recipe_path, ["output=fresh"], registry=registry), options)
    steps = [r.report["steps"][0] for r in (resumed, fresh)]
    assert [s["details"]["resumed_after_epoch"] for s in steps] == [1, None]
    assert [r["epoch"] for r in steps[0]["details"]["curve"]] == [1, 2, 3]
    weights = [torch.load(r.output_dir / ".cache" / "steps" / s["key"] / "weights.pt", weights_only=True)
               for r, s in zip((resumed, fresh), steps)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not (resumed.output_dir / ".cache" / "partial" / steps[0]["key"]).exists()  # cleaned on success


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("params, path, message", [
    ("{epochs: 2, steps: 100}", "passes[0].finetune.steps", "not both"),
    ("{distill: {alpha: 1.5}}", "passes[0].finetune.distill.alpha", "less than or equal to 1"),
    ("{distill: {temperature: 0}}", "passes[0].finetune.distill.temperature", "greater than 0"),
    ("{distill: {teacher: basline}}", "passes[0].finetune.distill.teacher", "did you mean 'baseline'"),
    ("{optimizer: adamw, momentum: 0.8}", "passes[0].finetune.momentum", "sgd only"),
    ("{warmup: 100}", "passes[0].finetune.warmup", "less than 1"),
    ("{epoch: 3}", "passes[0].finetune.epoch", "did you mean 'epochs'"),
])
def test_config_errors_name_the_key(recipe_path, registry, params, path, message):
    recipe_path.write_text(recipe_path.read_text().replace("{epochs: 3, lr: 0.05}", params))
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_path, registry=registry)
    (problem,) = info.value.problems
    assert problem.path == path and message in problem.format() and problem.line == 15


def test_config_defaults_depend_on_the_choice():
    config = FinetunePass.Config()
    assert (config.epochs, config.steps, config.lr, config.distill) == (2, None, 0.01, None)
    assert config.augment == "none"  # short recovery fine-tunes did better without (BENCHMARKS.md)
    adamw = FinetunePass.Config(optimizer="adamw", steps=50)
    assert (adamw.epochs, adamw.steps, adamw.lr) == (None, 50, 0.001)
    assert FinetunePass.Config(distill={}).distill.teacher == "baseline"


def test_pass_module_does_not_import_torch():
    code = "import sys, modelzip.passes.finetune; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- augmentation


def test_augmentation_is_vectorized_seeded_and_per_dataset():
    assert auto_augment("mnist", None) == Augment()  # digits: no flips
    fashion = auto_augment("fashion-mnist", ((0.2860,), (0.3530,)))
    assert (fashion.pad, fashion.flip, fashion.fill) == (2, True, (pytest.approx(-0.2860 / 0.3530),))
    assert auto_augment("cifar10", None).pad == 4
    images = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    out = fashion(images, torch.Generator().manual_seed(0))
    again = fashion(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and torch.equal(out, again)
    flipped = Augment(flip=True)(images, torch.Generator().manual_seed(1))
    for original, result in zip(images, flipped):
        assert torch.equal(result, original) or torch.equal(result, original.flip(-1))
    shifted = Augment(pad=1, fill=(-9.0,))(images, torch.Generator().manual_seed(2))
    values = set(shifted.unique().tolist())
    assert values <= set(images.unique().tolist()) | {-9.0}  # only moved pixels and the fill


# --------------------------------------------------------------------------- real data


@needs_fashion
def test_one_epoch_lifts_an_untrained_fashion_cnn(tmp_path, recipe_file, registry):
    torch.manual_seed(0)
    torch.save(fashion_cnn().state_dict(), tmp_path / "untrained.pt")
    path = recipe_file("""
        version: 1
        name: fashion-ft
        model: {source: "modelzip.zoo:fashion_cnn", checkpoint: untrained.pt, input_shape: [1, 1, 28, 28]}
        data: {dataset: fashion-mnist, limit_train: 3000, limit_eval: 1000, val_samples: 500, batch_size: 64}
        passes: [{finetune: {epochs: 1, lr: 0.05, augment: auto}}]
        """, name="fashion.yaml")
    recipe = load_recipe(path, registry=registry)
    bundle = load_data(recipe.data, base_dir=recipe.base_dir, seed=0)
    source = fashion_cnn()
    source.load_state_dict(torch.load(tmp_path / "untrained.pt", weights_only=True))
    artifact = Artifact(kind="torch", input_shape=(1, 1, 28, 28), id="u", module=source.eval())
    ctx = pass_context(recipe, bundle, pass_name="finetune", work_dir=tmp_path, baseline=artifact,
                       build_module=fashion_cnn)
    before = torch_accuracy(source, bundle.batches("eval"))
    produced = FinetunePass().run(artifact, recipe.passes[0].config, ctx)
    after = torch_accuracy(produced.module, bundle.batches("eval"))
    assert ctx.details["augment"] == "random crop, 2-px padding + horizontal flip"
    assert before < 0.3 and after > 0.65, (before, after)  # 0.03 -> 0.74 when written
