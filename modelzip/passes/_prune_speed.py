"""prune's speed check: a channel-pruned model is never silently slower than its input (issue #13).

After pruning, the input and the pruned model are exported to ONNX in a temporary folder and
timed interleaved in onnxruntime at data.batch_size (modelzip.evaluation.latency, a small
budget: SPEED_REPEATS runs each). When the pruned model is not faster and `round_to` was
`auto`, the channels are pruned again with twice the rounding (16 -> 32 -> 64): onnxruntime's
blocked (NCHWc) convolutions only take channel counts that are multiples of their block, and
scripts/probe_widths.py measured a depthwise + pointwise pair at a width that is not one 7-25x
slower than at the next multiple of 16. Every attempt is recorded; if none is faster, the
fastest is kept and ``slower_than_input`` says by how much and the likely cause.

Imports torch and onnxruntime: modelzip/passes/prune.py imports it inside ``run`` only.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelzip.envinfo import auto_record
from modelzip.evaluation.latency import SLOWER

# At most this many prunings in all (16, 32, 64 from auto's 16): each is a full target_macs search.
MAX_ATTEMPTS = 3
# Timed runs per model and comparison: at batch 64 a small CNN runs in 2-20 ms, so well under
# a second per comparison (measure_latency also caps one model's runs at ~3 s).
SPEED_REPEATS = 30
SPEED_WARMUP = 3
# Faster means the median ratio input/pruned is at least this and the verdict is not SLOWER:
# "within noise" at 0.99 is not a speedup worth a pruned model's lost accuracy, 1.0 or more is kept.
MIN_SPEEDUP = 1.0


@dataclass(frozen=True)
class Trial:
    """One pruning at one ``round_to``, timed against the input model."""

    round_to: int | None
    widths: str  # the pruned layers' new widths, e.g. "21/43/87/175"
    macs_kept: float
    speedup: float  # input median / pruned median: > 1 means the pruned model is faster
    ci_low: float
    ci_high: float
    verdict: str

    @property
    def faster(self) -> bool:
        return self.verdict != SLOWER and self.speedup >= MIN_SPEEDUP

    def to_json(self) -> dict[str, Any]:
        return {"round_to": self.round_to, "widths": self.widths, "macs_kept": self.macs_kept,
                "speedup": round(self.speedup, 3), "interval": [round(self.ci_low, 3), round(self.ci_high, 3)],
                "verdict": self.verdict}


@dataclass(frozen=True)
class SpeedCheck:
    """How to time: onnxruntime at ``batch`` with ``threads``; ``retry``: round_to was auto."""

    batch: int
    threads: int | None
    retry: bool
    block: int  # the channel multiple onnxruntime's blocked convolutions want here


def next_round_to(trials: list[Trial], retry: bool) -> int | None:
    """The rounding of the next attempt, or None to stop: the last one was faster, retries are
    off (an explicit round_to is the user's), the attempts are spent, or there was no rounding."""
    last = trials[-1]
    if last.faster or not retry or len(trials) >= MAX_ATTEMPTS or not last.round_to:
        return None
    return last.round_to * 2


def prune_until_faster(prune: Callable[[int | None], tuple[Any, dict]], timed: Callable[[Any, dict], Trial],
                       round_to: int | None, check: SpeedCheck,
                       log: Callable[[str], None] = lambda message: None) -> tuple[Any, dict, list[Trial], int]:
    """(module, details) of the first attempt faster than the input, else of the fastest; every
    attempt's Trial, and the index of the one kept.

    ``prune(round_to)`` returns (module, details) or raises PruneFailure; ``timed(module, details)``
    times it against the input. A PruneFailure after the first attempt (a coarser rounding that
    cannot reach the target) ends the retries; the attempts so far are kept.
    """
    from modelzip.pruning import PruneFailure

    results: list[tuple[Any, dict]] = []
    trials: list[Trial] = []
    while True:
        try:
            results.append(prune(round_to))
        except PruneFailure as failure:
            if not trials:
                raise
            log(f"round_to {round_to}: {failure.what}; keeping the earlier attempts")
            break
        trials.append(timed(*results[-1]))
        log(f"round_to {trials[-1].round_to}: widths {trials[-1].widths}, {trials[-1].speedup:.2f}x the "
            f"input's speed at batch {check.batch} ({trials[-1].verdict})")
        if trials[-1].round_to != round_to:  # round_to auto fell back to finer rounding: too narrow to coarsen
            break
        round_to = next_round_to(trials, check.retry)
        if round_to is None:
            break
    chosen = next((i for i, t in enumerate(trials) if t.faster),
                  max(range(len(trials)), key=lambda i: trials[i].speedup))
    return results[chosen][0], results[chosen][1], trials, chosen


def speed_details(trials: list[Trial], kept: int, check: SpeedCheck) -> dict[str, Any]:
    """What the step records: every attempt, and ``slower_than_input`` when none was faster."""
    chosen = trials[kept]
    details: dict[str, Any] = {"speed_check": {"batch": check.batch, "attempts": [t.to_json() for t in trials],
                                               "kept": kept}}
    if not chosen.faster:
        details["slower_than_input"] = {"ratio": round(chosen.speedup, 3), "batch": check.batch,
                                        "round_to": chosen.round_to, "block": check.block,
                                        "cause": slow_cause(chosen, check.block)}
    return details


def slow_cause(trial: Trial, block: int) -> str:
    """The likeliest reason a pruned model is not faster, from its widths."""
    widths = [int(w) for w in trial.widths.split("/") if w.isdigit()]
    odd = [w for w in widths if w % block]
    if odd:
        return (f"widths {trial.widths} are not all multiples of {block}: onnxruntime runs convolutions "
                f"with other channel counts outside its blocked (NCHWc) kernels, depthwise ones "
                f"often 10x slower (scripts/probe_widths.py)")
    return (f"widths {trial.widths} are multiples of {block}, so the time goes where MACs do not count: "
            f"depthwise convolutions, shortcut additions, activations and memory traffic, which pruning "
            f"shrinks less than it shrinks MACs ({trial.macs_kept:.0%} kept)")


def new_widths(widths: dict[str, list[int]]) -> str:
    """'21/43/87/175': the distinct widths of the pruned layers, in network order."""
    return "/".join(str(new) for new in dict.fromkeys(new for old, new in widths.values() if old != new))


class InputTimer:
    """Times pruned modules against the input module, exported once, in a temporary folder."""

    def __init__(self, module, input_shape: tuple[int, ...], check: SpeedCheck, *, pass_name: str,
                 step: int | None) -> None:
        self.input, self.input_shape, self.check = module, tuple(input_shape), check
        self.where = (pass_name, step)
        self._folder = tempfile.TemporaryDirectory(prefix="modelzip-prune-speed-")
        self._baseline: Path | None = None  # exported at the first timing (none if pruning fails)
        self._count = 0

    def __enter__(self) -> InputTimer:
        return self

    def __exit__(self, *exc_info) -> None:
        self._folder.cleanup()

    def _export(self, module, name: str) -> Path:
        from modelzip.onnx_export import export_onnx

        # TorchScript: a second or less here, where dynamo takes several; onnxruntime's optimized
        # graphs of the two exports run the same convolutions.
        path = Path(self._folder.name) / f"{name}.onnx"
        export_onnx(module, self.input_shape, path, opset=17, exporter="torchscript", dynamic_batch=True,
                    pass_name=self.where[0], step=self.where[1])
        return path

    def __call__(self, module, details: dict[str, Any]) -> Trial:
        from modelzip.evaluation.latency import compare_latency

        if self._baseline is None:
            self._baseline = self._export(self.input, "input")
        self._count += 1
        pruned = self._export(module, f"pruned{self._count}")
        _, _, comparison = compare_latency(self._baseline, pruned, self.input_shape, self.check.batch,
                                           threads=self.check.threads, warmup=SPEED_WARMUP,
                                           repeats=SPEED_REPEATS, min_timed_s=0.0)
        return Trial(details.get("round_to"), new_widths(details["widths"]), details["macs_kept"],
                     comparison.ratio, comparison.ci_low, comparison.ci_high, comparison.verdict)


def prune_checked(prune, round_to: int | None, auto: dict | None, artifact, ctx, *,
                  pass_name: str) -> tuple[Any, dict]:
    """The prune pass's channel pruning with the speed check (``auto``: how round_to was resolved,
    None when the recipe gave it): (module, details for the step)."""
    from modelzip.envinfo import channel_multiple, cpu_flags

    evaluation = ctx.recipe.evaluation
    check = SpeedCheck(batch=ctx.recipe.data.batch_size, threads=evaluation.threads, retry=auto is not None,
                       block=auto["value"] if auto else channel_multiple(cpu_flags())[0])
    with InputTimer(artifact.module, artifact.input_shape, check, pass_name=pass_name, step=ctx.step) as timer:
        module, details, trials, chosen = prune_until_faster(prune, timer, round_to, check, ctx.log)
    return module, {**details, **annotate(details, auto, trials, chosen, check)}


def annotate(details: dict, auto: dict | None, trials: list[Trial], kept: int, check: SpeedCheck) -> dict:
    """The details the speed check adds or replaces: round_to (with how auto resolved), the
    attempts, slower_than_input, and the summary with the speedup."""
    chosen = trials[kept]
    out = speed_details(trials, kept, check)
    if auto is not None:
        first = trials[0].round_to  # auto's value, or a finer one on a narrow model
        out["round_to"] = dict(auto_record(auto, first))
        out["round_to"]["value"] = chosen.round_to
        if chosen.round_to != first:
            out["round_to"]["reason"] += (f"; {first} gave a model no faster than its input, "
                                          f"{chosen.round_to} was tried next")
    speed = (f"{chosen.speedup:.2f}x the input's speed at batch {check.batch} ({chosen.verdict})"
             + ("" if chosen.faster else ": NOT faster, see slower_than_input"))
    rounding = f"round_to {chosen.round_to or 'none'}" + (" (auto)" if auto else "")
    out["summary"] = f"{details['summary']}; {rounding}; {speed}"
    return out
