"""BatchNorm recalibration: the machinery (modelzip.finetuning.batchnorm) and what prune and
lowrank record about it."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from modelzip.finetuning.batchnorm import batchnorm_layers, recalibrate_batchnorm
from modelzip.passes.lowrank import LowRankConfig, LowRankPass
from modelzip.passes.prune import PruneConfig, PrunePass
from modelzip.testing import make_context, tiny_artifact


def shifted_batches(count: int, size: int = 16, mean: float = 3.0, std: float = 2.0, seed: int = 0):
    """(x, y) batches of 4-feature inputs whose per-feature mean and std are ``mean`` and ``std``."""
    generator = torch.Generator().manual_seed(seed)
    return [(mean + std * torch.randn(size, 4, generator=generator), torch.zeros(size, dtype=torch.long))
            for _ in range(count)]


def bn_model(momentum: float | None = 0.1) -> nn.Module:
    # BN first, so its input is the data itself and its statistics are known.
    return nn.Sequential(nn.BatchNorm1d(4, momentum=momentum), nn.Dropout(0.5), nn.Linear(4, 2)).eval()


def test_running_stats_become_the_data_statistics():
    model = bn_model()
    batches = shifted_batches(8)
    used = recalibrate_batchnorm(model, batches, images=128)
    data = torch.cat([x for x, _ in batches])
    bn = model[0]
    # The image-weighted mean of batch means is the mean of all 128 rows, exactly.
    assert used == 128
    torch.testing.assert_close(bn.running_mean, data.mean(0), rtol=0, atol=1e-5)
    assert torch.allclose(bn.running_var, torch.full((4,), 4.0), rtol=0.3)  # std 2; fresh BN says 1
    assert bn.num_batches_tracked == 8


def test_stops_after_the_asked_images_cutting_the_last_batch():
    model = bn_model()
    batches = shifted_batches(8)
    assert recalibrate_batchnorm(model, batches, images=40) == 40  # 16 + 16 + 8
    data = torch.cat([x for x, _ in batches])[:40]
    torch.testing.assert_close(model[0].running_mean, data.mean(0), rtol=0, atol=1e-5)


def test_restores_momentum_and_flags_and_keeps_dropout_off():
    model = bn_model(momentum=0.3)
    model[2].train()  # a mixed state comes back as it was
    calls = []
    model[1].register_forward_hook(lambda m, i, o: calls.append((m.training, torch.is_grad_enabled())))
    model[0].register_forward_hook(lambda m, i, o: calls.append((m.training, m.momentum)))
    recalibrate_batchnorm(model, shifted_batches(2), images=32)
    assert calls[0][0] is True and calls[1] == (False, False)  # BN trained; dropout off; no grad
    assert model[0].momentum == 0.3 and [m.training for m in model] == [False, False, True]
    cumulative = bn_model(momentum=None)
    recalibrate_batchnorm(cumulative, shifted_batches(2), images=32)
    assert cumulative[0].momentum is None


def test_nothing_to_do_leaves_the_model_unchanged():
    untracked = nn.Sequential(nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2))
    assert batchnorm_layers(untracked) == []
    assert recalibrate_batchnorm(untracked, shifted_batches(2), images=32) == 0
    model = bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_batchnorm(model, shifted_batches(2), images=0) == 0
    assert recalibrate_batchnorm(model, [], images=32) == 0  # no data: the old statistics stay
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model[0].momentum == 0.1 and not model.training


def test_a_failing_forward_restores_everything():
    model = bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError):
        recalibrate_batchnorm(model, [(torch.zeros(4, 3), torch.zeros(4))], images=32)  # wrong width
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model[0].momentum == 0.1 and not model[0].training


# --------------------------------------------------------------------------- the passes


def _skewed_stats(artifact):
    """The tiny model with wrong BN statistics: what a pass that changed the layers leaves."""
    with torch.no_grad():
        for layer in batchnorm_layers(artifact.module):
            layer.running_mean.fill_(5.0)
            layer.running_var.fill_(0.01)
    return artifact


@pytest.mark.parametrize("pass_cls, params", [
    (PrunePass, {"method": "magnitude", "sparsity": 0.3}),
    (LowRankPass, {"rank_ratio": 0.5, "round_to": 1}),
])
def test_passes_recalibrate_and_report(pass_cls, params, tmp_path, monkeypatch):
    import modelzip.evaluation.accuracy as accuracy

    # The tiny model is untrained: its accuracy is noise, which must not decide which statistics stay.
    monkeypatch.setattr(accuracy, "torch_accuracy", lambda module, batches: 0.5)
    ctx = make_context(pass_cls.name, work_dir=tmp_path)
    produced = pass_cls().run(_skewed_stats(tiny_artifact()), pass_cls.Config(**params), ctx)
    entry = ctx.details["bn_recalibration"]
    assert entry["layers"] == 2 and entry["images"] == 224  # the whole train split: 256 - 32 validation
    assert entry["accuracy_split"] == "validation" and entry["accuracy_images"] == 32
    assert 0 <= entry["accuracy_before"] <= 1 and 0 <= entry["accuracy_after"] <= 1
    assert "BN recalibrated on 224 images: val " in ctx.details["summary"]
    assert "fewer than recalibrate_bn" in entry["note"]
    assert float(batchnorm_layers(produced.module)[0].running_var.max()) > 0.01  # the skew is gone


def test_off_or_without_batchnorm_nothing_is_read(tmp_path):
    def no_data():
        raise AssertionError("read the data")

    ctx = make_context("lowrank", work_dir=tmp_path / "off")
    ctx.load_data = no_data
    produced = LowRankPass().run(_skewed_stats(tiny_artifact()), LowRankConfig(rank_ratio=0.5, recalibrate_bn=0), ctx)
    assert ctx.details["bn_recalibration"]["images"] == 0 and "off" in ctx.details["bn_recalibration"]["note"]
    assert float(batchnorm_layers(produced.module)[0].running_var.max()) == pytest.approx(0.01)
    assert "BN" not in ctx.details["summary"]

    ctx = make_context("prune", work_dir=tmp_path / "none")
    ctx.load_data = no_data
    plain = tiny_artifact()
    plain.module.features[1] = nn.Identity()
    plain.module.features[5] = nn.Identity()
    PrunePass().run(plain, PruneConfig(method="magnitude", sparsity=0.3), ctx)
    assert ctx.details["bn_recalibration"]["layers"] == 0 and ctx.details["bn_recalibration"]["images"] == 0


def test_empty_validation_split_skips_the_accuracies(tmp_path):
    from modelzip.testing.fixtures import tiny_recipe

    ctx = make_context("prune", work_dir=tmp_path, recipe=tiny_recipe(tmp_path, overrides=["data.val_samples=0"]))
    PrunePass().run(tiny_artifact(), PruneConfig(method="magnitude", sparsity=0.3, recalibrate_bn=64), ctx)
    entry = ctx.details["bn_recalibration"]
    assert entry["images"] == 64 and entry["accuracy_before"] is None and entry["accuracy_split"] is None
    assert "validation split is empty" in entry["note"]
    assert ctx.details["summary"].endswith("BN recalibrated on 64 images (no validation split to measure it)")


@pytest.mark.parametrize("config_cls, params", [
    (PruneConfig, {"method": "channel", "ratio": 0.25}), (LowRankConfig, {"rank_ratio": 0.5})])
def test_config_default_and_bounds(config_cls, params):
    assert config_cls(**params).recalibrate_bn == 512
    assert config_cls(**params, recalibrate_bn=0).recalibrate_bn == 0
    for wrong in (-1, 100_001, 1.5):
        with pytest.raises(ValidationError) as excinfo:
            config_cls(**params, recalibrate_bn=wrong)
        assert excinfo.value.errors()[0]["loc"] == ("recalibrate_bn",)


def test_lowrank_step_key_covers_the_data_only_when_it_recalibrates(tmp_path):
    from modelzip.distributed import Layout
    from modelzip.pipeline import RunOptions, _Runner
    from modelzip.testing.fixtures import tiny_recipe

    runner = _Runner(tiny_recipe(tmp_path), RunOptions(device="cpu"), Layout())
    lowrank = LowRankPass()
    assert runner.step_inputs(lowrank, LowRankConfig(rank_ratio=0.5, recalibrate_bn=0))["data"] is None
    assert runner.step_inputs(lowrank, LowRankConfig(rank_ratio=0.5))["data"] is not None
    assert lowrank.reads_for(LowRankConfig(rank_ratio=0.5)) == lowrank.reads == {"data", "cpu"}
    assert lowrank.reads_for(LowRankConfig(rank_ratio=0.5, round_to=16, recalibrate_bn=0)) == frozenset()


def test_statistics_that_validate_worse_are_not_kept(tmp_path, monkeypatch):
    """Recalibration that makes validation accuracy fall clearly leaves the pass's statistics in place."""
    import modelzip.evaluation.accuracy as accuracy
    import modelzip.finetuning.batchnorm as machinery

    def ruin(module, batches, images):
        for layer in batchnorm_layers(module):
            layer.running_mean.fill_(1e3)
        return images

    def validated(module, batches):  # ruined statistics score 10%, any others 90%
        return 0.1 if float(batchnorm_layers(module)[0].running_mean.max()) >= 1e3 else 0.9

    monkeypatch.setattr(machinery, "recalibrate_batchnorm", ruin)
    monkeypatch.setattr(accuracy, "torch_accuracy", validated)
    ctx = make_context("prune", work_dir=tmp_path)
    produced = PrunePass().run(tiny_artifact(), PruneConfig(method="magnitude", sparsity=0.1, recalibrate_bn=64), ctx)
    entry = ctx.details["bn_recalibration"]
    assert (entry["accuracy_before"], entry["accuracy_after"], entry["kept"]) == (0.9, 0.1, "previous")
    assert float(batchnorm_layers(produced.module)[0].running_mean.abs().max()) < 1e3
    assert "previous statistics kept" in ctx.details["summary"]


def test_lowrank_that_changed_nothing_keeps_the_statistics(tmp_path):
    ctx = make_context("lowrank", work_dir=tmp_path)
    LowRankPass().run(tiny_artifact(), LowRankConfig(rank_ratio=1.0), ctx)
    entry = ctx.details["bn_recalibration"]
    assert ctx.details["factorized"] == 0 and entry["images"] == 0 and entry["note"] == "the pass changed no layer"
