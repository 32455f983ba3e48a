"""prune's ``target_macs: auto`` at run time: the context mapped onto modelzip.pruning.budget.

Imports torch, so prune.py imports it inside ``run`` only. One trial at ``target_macs`` t:
prune a fresh copy of the input to t and recalibrate its BatchNorm statistics (as a fixed
``target_macs: t`` would; no speed check: the final latency and its warning still apply), fine-tune it
for ``finetune_epochs`` distilled from the input model with the finetune pass's defaults
(what ``- finetune: {epochs: E, distill: {teacher: input}}`` would do), and read its
accuracy on the validation split. Decisions never look at the eval split: it is what the
report's accuracy, and its gates, are measured on.

Trials are memoized within the run by the pruned weights themselves: two targets that
prune to the same model (round_to makes widths coarse) share one fine-tune (each distinct
trial's model is held until the search ends: at most search_steps + 2 copies). Across runs
the pipeline caches the step's result under a key that covers the parameters, the data,
the seed and the device; the trials themselves are not cached one by one.
"""
from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import replace

from modelzip.errors import PassError
from modelzip.evaluation.accuracy import torch_accuracy
from modelzip.finetuning.loop import Hooks
from modelzip.finetuning.runtime import LocalRuntime
from modelzip.passes._bn import recalibrated
from modelzip.passes._distill import DistillConfig
from modelzip.passes._training import augment_for, objective_for, train_module, train_settings
from modelzip.passes.finetune import FinetuneConfig
from modelzip.pruning import PruneFailure
from modelzip.pruning.budget import BudgetSearch, Measured, pp, search_budget

TABLE_HEADER = ["target_macs", "MACs kept", "val after pruning", "val after fine-tuning", "drop",
                "within budget", "seconds"]


def prune_within_budget(artifact, config, ctx, prune_at):
    """(module, details) at the smallest ``target_macs`` within ``config.max_accuracy_drop``;
    ``prune_at(t)`` is the pass's channel pruning of the input to ``target_macs`` t, (module, details)
    (with round_to auto's fallback to finer rounding), or a PruneFailure when t is out of reach."""
    data = ctx.data
    if not len(data.validation):
        raise PassError("target_macs: auto decides on the validation split, which is empty",
                        pass_name=ctx.pass_name, step=ctx.step, got="0 validation images",
                        expected="a validation split (the eval split only ever measures the result)",
                        fix="set data.val_samples > 0, e.g. 5000")
    reference = _accuracy(artifact.module, data, ctx.device)
    ctx.log(f"target_macs auto: the input model scores {reference:.2%} on {len(data.validation):,} "
            f"validation images; budget {pp(config.max_accuracy_drop)}")
    trials = _Trials(artifact, config, ctx, prune_at)
    low, high = config.search_range
    search = search_budget(trials.measure, reference=reference, max_drop=config.max_accuracy_drop,
                           low=low, high=high, steps=config.search_steps, log=ctx.log)
    ctx.record_table("target_macs search (validation accuracy)", TABLE_HEADER,
                     [_row(trial) for trial in search.trials])
    chosen = search.chosen
    if chosen is None:
        raise _over_budget(search, config, ctx)
    module, details = chosen.measured.payload  # prune_at checked that it reloads
    epochs = f"{config.finetune_epochs} epoch{'s' if config.finetune_epochs != 1 else ''}"
    summary = (f"target_macs auto: chose {chosen.target_macs:g} (val {chosen.measured.accuracy:.2%}, "
               f"drop {pp(chosen.drop)} <= {pp(config.max_accuracy_drop)}) after {len(search.trials)} "
               f"trials; pruned, then fine-tuned {epochs} distilled from the input; {details['summary']}")
    return module, {**details, "summary": summary, "val_accuracy": round(chosen.measured.accuracy, 4),
                    "search": _search_json(search, config, len(data.validation))}


class _Trials:
    """``measure(t)`` for the search: prune, fine-tune briefly, validate; memoized by the pruned weights."""

    def __init__(self, artifact, config, ctx, prune_at) -> None:
        self.artifact, self.ctx, self.prune_at = artifact, ctx, prune_at
        self.recalibrate_bn = config.recalibrate_bn
        # The finetune pass's defaults, distilled from the input model: what a following
        # `finetune` step would do, so the search predicts it.
        self.finetune = FinetuneConfig(epochs=config.finetune_epochs, distill=DistillConfig(teacher="input"))
        augment = augment_for(self.finetune.augment, ctx.recipe.data)
        self.train = train_settings(self.finetune, ctx, augment)
        self.objective = objective_for(self.finetune.distill, self.finetune.label_smoothing, artifact, ctx,
                                       ctx.pass_name)
        self.seen: dict[str, Measured] = {}

    def measure(self, target: float) -> Measured:
        ctx, started = self.ctx, time.perf_counter()
        try:
            module, details = self.prune_at(target)
        except PruneFailure as failure:  # e.g. below what the widths can reach: over budget, not fatal
            ctx.log(f"target_macs {target:g}: {failure.what}; counted as over budget")
            return Measured(macs_kept=1.0, pruned_accuracy=0.0, accuracy=0.0,
                            seconds=time.perf_counter() - started, payload=None)
        # As a fixed target_macs would: BatchNorm statistics re-estimated before fine-tuning.
        details = recalibrated(details, module, self.recalibrate_bn, ctx)
        digest = _digest(module)
        if digest in self.seen:  # the same model as an earlier target: its fine-tune is the same
            ctx.log(f"target_macs {target:g} prunes to the same model as an earlier trial")
            earlier = self.seen[digest]
            module, _ = earlier.payload
            return replace(earlier, payload=(module, {**details, "macs_kept": earlier.macs_kept}),
                           seconds=time.perf_counter() - started)
        pruned_accuracy = _accuracy(module, ctx.data, ctx.device)
        # One process: under torchrun the prune pass runs on rank 0 alone while the others wait.
        trained = train_module(module, self.train, self.objective, Hooks(log=ctx.log, track=ctx.track),
                               config=self.finetune, ctx=ctx, pass_name=ctx.pass_name, runtime=LocalRuntime())
        measured = Measured(macs_kept=details["macs_kept"], pruned_accuracy=pruned_accuracy,
                            accuracy=trained.result.best_val_accuracy, seconds=time.perf_counter() - started,
                            payload=(trained.module, details))
        self.seen[digest] = measured
        return measured


def _accuracy(module, data, device: str) -> float:
    """Validation accuracy on ``device``, leaving ``module`` where it was."""
    return torch_accuracy(copy.deepcopy(module).to(device), data.batches("validation"))


def _digest(module) -> str:
    """The pruned model's identity: its shapes and weights."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _row(trial) -> list[str]:
    m = trial.measured
    return [f"{trial.target_macs:g}", f"{m.macs_kept:.1%}", f"{m.pruned_accuracy:.2%}", f"{m.accuracy:.2%}",
            pp(trial.drop), "yes" if trial.feasible else "no", f"{m.seconds:.0f}"]


def _search_json(search: BudgetSearch, config, validation_samples: int) -> dict:
    chosen = search.chosen
    return {"reference_val_accuracy": round(search.reference, 4), "validation_samples": validation_samples,
            "max_accuracy_drop": config.max_accuracy_drop, "search_range": list(config.search_range),
            "search_steps": config.search_steps, "finetune_epochs": config.finetune_epochs,
            "chosen": None if chosen is None else chosen.target_macs, "within_budget": chosen is not None,
            "trials": [trial.to_json() for trial in search.trials]}


def _over_budget(search: BudgetSearch, config, ctx) -> PassError:
    best = search.best
    low, high = config.search_range
    return PassError(
        f"no target_macs in [{low:g}, {high:g}] keeps validation accuracy within "
        f"{pp(config.max_accuracy_drop)} of the input model's {search.reference:.2%} after "
        f"{config.finetune_epochs} fine-tuning epoch(s)", pass_name=ctx.pass_name, step=ctx.step,
        got=f"the best of {len(search.trials)} trials: target_macs {best.target_macs:g} at "
            f"{best.measured.accuracy:.2%}, a drop of {pp(best.drop)}",
        expected=f"a drop <= {pp(config.max_accuracy_drop)}",
        fix="raise max_accuracy_drop or finetune_epochs, raise search_range's upper bound, or prune "
            "to a fixed target_macs and follow it with a longer finetune step")
