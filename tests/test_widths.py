"""round_to: auto and prune's speed check (issue #13): widths follow what onnxruntime runs fast on
this CPU, and a channel-pruned model is never silently slower than its input."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from modelzip import envinfo
from modelzip.evaluation.latency import FASTER, SLOWER, WITHIN_NOISE
from modelzip.evaluation.records import Finding, LatencyPair, LatencyResult, Metrics, StepRecord, Timing
from modelzip.findings import find_problems
from modelzip.passes import _prune_speed as speed
from modelzip.passes.lowrank import LowRankConfig, lowrank_settings
from modelzip.passes.prune import PruneConfig, PrunePass
from modelzip.pruning import PruneFailure

# ----------------------------------------------------------------- round_to: auto


@pytest.mark.parametrize("flags, machine, expected", [
    (["avx", "avx2", "avx512f", "fma"], "x86_64", 16),
    (["avx", "avx2", "fma"], "x86_64", 8),
    (["sse4_2"], "x86_64", 8),
    ([], "x86_64", 8),
    (["neon"], "aarch64", 8),
    ([], "arm64", 8),
])
def test_channel_multiple_follows_the_cpu_flags(flags, machine, expected):
    value, reason = envinfo.channel_multiple(flags, machine)
    assert value == expected and "onnxruntime" in reason
    assert ("AVX-512F" in reason) == (expected == 16)


def test_auto_resolves_from_proc_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Fake CPU\nflags\t\t: fpu sse4_2 avx avx2 fma\n\n"
                       "processor\t: 1\nflags\t\t: avx512f\n")  # only the first CPU's block counts
    monkeypatch.setattr(envinfo, "_CPUINFO", cpuinfo)
    monkeypatch.setattr(envinfo.platform, "machine", lambda: "x86_64")
    assert envinfo.auto_round_to("auto") == (8, {"value": 8, "auto": True, "reason": (
        "onnxruntime NCHWc convolutions work on blocks of 8 channels (AVX2)")})
    cpuinfo.write_text("processor\t: 0\nflags\t\t: avx avx2 avx512f avx512bw\n")
    assert envinfo.auto_round_to("auto")[0] == 16


@pytest.mark.parametrize("value, expected", [(16, 16), (8, 8), (32, 32), (1, None), (None, None)])
def test_explicit_round_to_is_kept(value, expected):
    assert envinfo.auto_round_to(value) == (expected, None)


def test_round_to_validation():
    assert PruneConfig(method="channel", ratio=0.5).round_to == "auto"
    assert PruneConfig(method="channel", ratio=0.5, round_to=None).round_to is None
    assert PruneConfig(method="channel", ratio=0.5, round_to=16).round_to == 16
    assert PruneConfig(method="channel", ratio=0.5).check_speed is True
    for wrong in (0, 513, "fast"):
        with pytest.raises(ValidationError):
            PruneConfig(method="channel", ratio=0.5, round_to=wrong)
    with pytest.raises(ValidationError, match="applies only to method: channel"):
        PruneConfig(method="magnitude", sparsity=0.5, check_speed=False)
    assert LowRankConfig(energy=0.9).round_to == "auto"
    with pytest.raises(ValidationError):
        LowRankConfig(energy=0.9, round_to="fast")


def test_lowrank_settings_use_the_resolved_rounding():
    assert lowrank_settings(LowRankConfig(energy=0.9), 16).round_to == 16
    assert lowrank_settings(LowRankConfig(energy=0.9), None).round_to == 1
    assert lowrank_settings(LowRankConfig(energy=0.9, round_to=8), 16).round_to == 8


def test_passes_key_on_the_cpu():
    """round_to: auto follows the CPU's flags, and the speed check times models: both in the key."""
    from modelzip.passes.lowrank import LowRankPass

    assert {"timing", "cpu"} <= PrunePass.reads and "cpu" in LowRankPass.reads
    channel = PrunePass().reads_for(PruneConfig(method="channel", ratio=0.5))
    assert {"timing", "cpu"} <= channel
    explicit = PrunePass().reads_for(PruneConfig(method="channel", ratio=0.5, round_to=16, check_speed=False))
    assert not {"timing", "cpu"} & explicit
    magnitude = PrunePass().reads_for(PruneConfig(method="magnitude", sparsity=0.5, recalibrate_bn=0))
    assert magnitude == frozenset()
    assert "cpu" in LowRankPass().reads_for(LowRankConfig(rank_ratio=0.5))


# ----------------------------------------------------------------- the speed check's decisions


def trial(round_to, speedup, verdict=None, widths="16/48/112") -> speed.Trial:
    verdict = verdict or (FASTER if speedup > 1.1 else SLOWER if speedup < 0.9 else WITHIN_NOISE)
    return speed.Trial(round_to, widths, 0.49, speedup, speedup - 0.05, speedup + 0.05, verdict)


@pytest.mark.parametrize("trials, retry, expected", [
    ([trial(16, 1.9)], True, None),  # faster: keep it
    ([trial(16, 0.6)], True, 32),  # slower: twice the rounding
    ([trial(16, 0.6), trial(32, 0.8)], True, 64),
    ([trial(16, 0.6), trial(32, 0.8), trial(64, 0.9)], True, None),  # attempts spent
    ([trial(16, 0.6)], False, None),  # an explicit round_to is the user's
    ([trial(None, 0.6)], True, None),  # no rounding to coarsen
    ([trial(16, 0.99, WITHIN_NOISE)], True, 32),  # not faster, even within noise
    ([trial(16, 1.01, WITHIN_NOISE)], True, None),
])
def test_next_round_to(trials, retry, expected):
    assert speed.next_round_to(trials, retry) == expected


def _check(retry=True):
    return speed.SpeedCheck(batch=64, threads=2, retry=retry, block=16)


def _run(timings: dict, retry=True, fail_at=()):
    """prune_until_faster with a fake pruning and fake timings by round_to."""
    pruned = []

    def prune(round_to):
        if round_to in fail_at:
            raise PruneFailure("target_macs 0.5 is out of reach")
        pruned.append(round_to)
        return f"module@{round_to}", {"round_to": round_to}

    def timed(module, details):
        return trial(details["round_to"], timings[details["round_to"]], widths=f"{details['round_to']}/x")

    module, details, trials, kept = speed.prune_until_faster(prune, timed, 16, _check(retry))
    return module, trials, kept, pruned


def test_retries_with_coarser_rounding_until_faster():
    module, trials, kept, pruned = _run({16: 0.65, 32: 1.4, 64: 2.0})
    assert pruned == [16, 32] and module == "module@32" and kept == 1
    assert [t.round_to for t in trials] == [16, 32]


def test_keeps_the_fastest_when_none_is_faster():
    module, trials, kept, _ = _run({16: 0.65, 32: 0.8, 64: 0.7})
    assert module == "module@32" and kept == 1 and len(trials) == 3
    details = speed.speed_details(trials, kept, _check())
    assert details["slower_than_input"]["ratio"] == 0.8
    assert [a["round_to"] for a in details["speed_check"]["attempts"]] == [16, 32, 64]


def test_a_coarser_rounding_that_cannot_reach_the_target_ends_the_retries():
    module, trials, kept, pruned = _run({16: 0.65}, fail_at=(32,))
    assert pruned == [16] and module == "module@16" and len(trials) == 1


def test_a_narrow_model_that_fell_back_to_finer_rounding_is_not_coarsened_again():
    """round_to auto asked 16, the fallback used 8: doubling 8 back to 16 would prune the same
    model again (three identical prunings, exports and timings)."""
    calls = []

    def prune(round_to):
        calls.append(round_to)
        return "module@8", {"round_to": 8}

    _, _, trials, _ = speed.prune_until_faster(prune, lambda m, d: trial(d["round_to"], 0.7), 16, _check(True))
    assert calls == [16] and [t.round_to for t in trials] == [8]


def test_a_first_failure_is_the_pass_failure():
    with pytest.raises(PruneFailure):
        _run({}, fail_at=(16,))


def test_explicit_rounding_is_not_retried():
    module, trials, _, pruned = _run({16: 0.65}, retry=False)
    assert pruned == [16] and module == "module@16"


def test_slow_cause_names_the_widths():
    odd = speed.slow_cause(trial(None, 0.6, widths="21/43/87/175"), 16)
    assert "21/43/87/175 are not all multiples of 16" in odd
    even = speed.slow_cause(trial(16, 0.9, widths="16/48/112"), 16)
    assert "are multiples of 16" in even and "depthwise" in even


def test_annotate_records_auto_and_the_retry():
    auto = {"value": 16, "auto": True, "reason": "onnxruntime NCHWc convolutions work on blocks of 16 channels"}
    trials = [trial(16, 0.6, widths="16/48"), trial(32, 1.5, widths="32/32")]
    out = speed.annotate({"summary": "kept 49% of MACs"}, auto, trials, 1, _check())
    assert out["round_to"]["value"] == 32 and out["round_to"]["auto"] is True
    assert "16 gave a model no faster" in out["round_to"]["reason"]
    assert out["summary"] == "kept 49% of MACs; round_to 32 (auto); 1.50x the input's speed at batch 64 (faster)"
    assert "slower_than_input" not in out


def test_new_widths_in_network_order():
    widths = {"a": [32, 21], "b": [32, 21], "c": [64, 43], "d": [10, 10], "e": [128, 87]}
    assert speed.new_widths(widths) == "21/43/87"


def test_prune_pass_records_the_speed_check(monkeypatch):
    """The pass end to end with a fake timer: auto's 16 is slower, 32 is kept (fashion_cnn, real pruning)."""
    import torch

    from modelzip.artifacts import Artifact
    from modelzip.zoo import fashion_cnn

    class FakeTimer:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            pass

        def __call__(self, module, details):
            rounding = details["round_to"]
            return trial(rounding, 0.7 if rounding == 16 else 1.3, widths=speed.new_widths(details["widths"]))

    monkeypatch.setattr(speed, "InputTimer", FakeTimer)
    monkeypatch.setattr(envinfo, "cpu_flags", lambda: ["avx", "avx2", "avx512f"])
    recorded = {}
    ctx = SimpleNamespace(step=0, seed=0, log=lambda message: None, record=lambda **items: recorded.update(items),
                          recipe=SimpleNamespace(data=SimpleNamespace(batch_size=64),
                                                 evaluation=SimpleNamespace(threads=2)),
                          data=None, build_module=lambda: fashion_cnn())
    torch.manual_seed(0)
    artifact = Artifact(kind="torch", input_shape=(1, 1, 28, 28), id="x", module=fashion_cnn().eval())
    PrunePass().run(artifact, PruneConfig(method="channel", target_macs=0.5, ignore=("features.0",),
                                          recalibrate_bn=0), ctx)
    assert recorded["round_to"]["value"] == 32 and recorded["round_to"]["auto"]
    attempts = recorded["speed_check"]["attempts"]
    assert [a["round_to"] for a in attempts] == [16, 32] and recorded["speed_check"]["kept"] == 1
    assert all(new % 32 == 0 for old, new in recorded["widths"].values() if old != new)


def test_auto_falls_back_to_finer_rounding_on_a_narrow_model(monkeypatch):
    """tiny_cnn's layers have 8 and 16 channels: multiples of 16 cannot reach half its MACs, and
    auto must not fail where round_to: null works; it prunes in multiples of 8 or less and says so."""
    import torch

    from modelzip.artifacts import Artifact
    from modelzip.zoo import tiny_cnn

    monkeypatch.setattr(envinfo, "cpu_flags", lambda: ["avx", "avx2", "avx512f"])
    recorded, logged = {}, []
    ctx = SimpleNamespace(step=0, seed=0, log=logged.append, record=lambda **items: recorded.update(items),
                          data=None, build_module=lambda: tiny_cnn())
    torch.manual_seed(0)
    artifact = Artifact(kind="torch", input_shape=(1, 1, 28, 28), id="x", module=tiny_cnn().eval())
    config = PruneConfig(method="channel", target_macs=0.5, check_speed=False, recalibrate_bn=0)
    PrunePass().run(artifact, config, ctx)
    used = recorded["round_to"]["value"]
    assert recorded["round_to"]["auto"] and used in (8, 4, 2, None)
    assert "out of reach in multiples of 16" in recorded["round_to"]["reason"]
    assert any("trying finer rounding" in line for line in logged)
    assert recorded["macs_kept"] <= 0.5


# ----------------------------------------------------------------- warnings


def _metrics() -> Metrics:
    return Metrics(0.9, "torch", 100, 1000, 1000, 10_000, 4000)


def _step(index, name, details) -> StepRecord:
    return StepRecord(index, name, {}, "k", False, "torch", 1.0, details, _metrics())


def _latency(ratio, verdict) -> LatencyResult:
    timing = Timing(64, 1.0, 1.1, 1.0, 20, 2)
    return LatencyResult((LatencyPair(64, timing, timing, ratio, ratio - 0.05, ratio + 0.05, 20, verdict),))


def test_a_pruned_step_slower_than_its_input_is_a_warning():
    slower = {"ratio": 0.5, "batch": 64, "round_to": None, "block": 16,
              "cause": "widths 21/43/87 are not all multiples of 16"}
    found = find_problems(_metrics(), [_step(0, "prune", {"slower_than_input": slower})], None).warnings
    assert [f.kind for f in found] == ["slower_than_input"]
    assert "0.50x its input's speed at batch 64: widths 21/43/87" in found[0].message
    assert "round_to: auto (16 on this CPU)" in found[0].fix
    again = {**slower, "round_to": 16}
    assert "round_to: 32" in find_problems(_metrics(), [_step(0, "prune", {"slower_than_input": again})],
                                           None).warnings[0].fix


@pytest.mark.parametrize("verdict, warned", [(SLOWER, True), (WITHIN_NOISE, False), (FASTER, False)])
def test_a_final_model_slower_than_the_baseline_is_a_warning(verdict, warned):
    steps = [_step(0, "prune", {"effect": "removed"}), _step(1, "export", {})]
    found = find_problems(_metrics(), steps, None, _latency(0.6 if verdict == SLOWER else 0.98, verdict)).warnings
    assert [f.kind for f in found] == (["final_slower"] if warned else [])
    if warned:
        assert found[0] == Finding(1, "export", "final_slower", found[0].message, found[0].fix)
        assert "0.60x its speed at batch 64" in found[0].message and "round_to" in found[0].fix


def test_magnitude_pruning_slower_says_it_brings_no_speedup():
    steps = [_step(0, "prune", {"effect": "masked"}), _step(1, "export", {})]
    found = find_problems(_metrics(), steps, None, _latency(0.8, SLOWER)).warnings
    assert "no speedup by itself" in found[0].fix


def test_no_latency_no_final_warning():
    assert find_problems(_metrics(), [_step(0, "export", {})], None, None).warnings == ()
