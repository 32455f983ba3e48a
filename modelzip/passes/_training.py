"""The finetune pass at run time: its config and context mapped onto modelzip.finetuning.

Imports torch, so the pass modules import it inside ``run`` only. The teacher of a
distillation (``baseline``, ``input`` or a checkpoint file) is resolved here, for the
finetune pass and for quantize's qat mode alike; the machinery receives the module.
Pruning while fine-tuning (``prune:``) meets the loop here too: modelzip.pruning's
GradualPruner is handed to the loop's per-step hooks (finetuning and pruning never
import each other).
"""
from __future__ import annotations

import hashlib
from typing import Any

from modelzip.errors import InputError, PassError
from modelzip.finetuning.augment import Augment, choose_augment
from modelzip.finetuning.checkpoint import CheckpointStore
from modelzip.finetuning.distill import TeacherMismatch, make_objective
from modelzip.finetuning.loop import FitResult, Hooks, NonFiniteLoss, TrainSettings
from modelzip.finetuning.train import FinetuneFailure, finetune
from modelzip.passes._gradual import gradual_settings
from modelzip.pruning import PruneFailure
from modelzip.pruning.gradual import GradualPruner
from modelzip.sources.models import load_state, read_state_dict

SEED_OFFSET = 7919  # fine-tuning's own random stream, apart from other passes seeded by ctx.seed


def run_finetune(artifact, config, ctx, *, pass_name: str):
    data = ctx.data
    objective = objective_for(config.distill, config.label_smoothing, artifact, ctx, pass_name)
    augment = augment_for(config.augment, ctx.recipe.data)
    settings = train_settings(config, ctx, augment)
    store = checkpoint_store(artifact, config, ctx)
    if config.patience is not None and len(data.train) and not len(data.validation):
        ctx.log("patience is set but the validation split is empty (data.val_samples): no early stopping")
    pruner = _pruner(config.prune, artifact, ctx, pass_name)
    hooks = Hooks(log=ctx.log, track=ctx.track, checkpoints=store)
    if pruner is not None:
        # Masks follow the schedule after every optimizer step; only epochs at the final
        # sparsity may be kept as the best one (an earlier, denser epoch is not the result).
        hooks.on_train_start, hooks.on_step, hooks.selectable = pruner.start, pruner.update, pruner.at_final
    trained = train_module(artifact.module, settings, objective, hooks, config=config, ctx=ctx,
                           pass_name=pass_name)
    pruning = pruner.details(trained.module) if pruner is not None else None
    _record(ctx, config, settings, trained.result, augment, objective, pruning)
    return artifact.evolve(module=trained.module)


def checkpoint_store(artifact, config, ctx) -> CheckpointStore | None:
    """Per-epoch checkpoints in the step's resume directory, so an interrupted run resumes (None: no directory)."""
    if ctx.resume_dir is None:
        return None
    return CheckpointStore(ctx.resume_dir, fingerprint=_fingerprint(artifact, config, ctx))


def train_settings(config, ctx, augment: Augment) -> TrainSettings:
    """A FinetuneConfig's training settings on the context's device and seed."""
    return TrainSettings(
        epochs=config.epochs, steps=config.steps, optimizer=config.optimizer, lr=config.lr,
        weight_decay=config.weight_decay, momentum=config.momentum, schedule=config.schedule,
        warmup=config.warmup, grad_clip=config.grad_clip, batch_size=config.batch_size,
        patience=config.patience, seed=ctx.seed + SEED_OFFSET, device=ctx.device, augment=augment)


def train_module(module, settings: TrainSettings, objective, hooks: Hooks, *, config, ctx,
                 pass_name: str, runtime=None):
    """``finetune`` on ``ctx.data``, its failures turned into PassErrors (``config``: a FinetuneConfig;
    ``runtime`` None: data-parallel under torchrun, for a pass every process runs)."""
    try:
        return finetune(module, ctx.data, settings, objective, hooks, runtime)
    except FinetuneFailure as failure:
        raise PassError(failure.what, pass_name=pass_name, step=ctx.step, got=failure.got,
                        expected=failure.expected,
                        fix="raise data.limit_train or lower data.val_samples") from failure
    except TeacherMismatch as exc:
        raise teacher_mismatch_error(exc, ctx, pass_name) from exc
    except NonFiniteLoss as exc:
        raise _non_finite_error(exc, config, ctx, pass_name) from exc


def _pruner(prune, artifact, ctx, pass_name: str) -> GradualPruner | None:
    """The pruner of ``prune:`` (a GradualPruneConfig), checked against the model before training."""
    if prune is None:
        return None
    try:
        return GradualPruner(artifact.module, gradual_settings(prune))
    except PruneFailure as failure:
        raise PassError(failure.what, pass_name=pass_name, step=ctx.step, **failure.fields()) from failure


def _non_finite_error(exc: NonFiniteLoss, config, ctx, pass_name: str) -> PassError:
    return PassError(
        f"the training loss became {exc.value} at epoch {exc.epoch}, iteration {exc.iteration} "
        f"(optimizer step {exc.step}), learning rate {exc.lr:.3g}",
        pass_name=pass_name, step=ctx.step, got=f"loss {exc.value} with lr {exc.lr:.3g}",
        expected="a finite loss",
        fix=f"lower lr (e.g. lr: {config.lr / 10:g}), set grad_clip: 1.0, or add warmup: 0.05")


# --------------------------------------------------------------------------- objective and teacher


def objective_for(distill, label_smoothing: float, artifact, ctx, pass_name: str):
    """Cross-entropy, or distillation when ``distill`` (a DistillConfig) is set (also quantize's qat)."""
    weights = ctx.recipe.model.task_weights
    if distill is None:
        return make_objective(label_smoothing=label_smoothing, task_weights=weights)
    teacher = _teacher(distill.teacher, artifact, ctx, pass_name)
    return make_objective(teacher, alpha=distill.alpha, temperature=distill.temperature,
                          label_smoothing=label_smoothing, task_weights=weights)


def teacher_mismatch_error(exc: TeacherMismatch, ctx, pass_name: str) -> PassError:
    return PassError("the teacher's outputs do not match the student's", pass_name=pass_name,
                     step=ctx.step, got=exc.mismatch, expected="logits over the same classes",
                     fix="distill from a teacher trained on the same labels (e.g. teacher: baseline)")


def _teacher(teacher: str, artifact, ctx, pass_name: str):
    """The teacher module (Distillation makes its own frozen copy)."""
    if teacher == "input":
        return artifact.module
    if teacher == "baseline":
        return ctx.baseline.module
    where = f"passes[{ctx.step}].{pass_name}.distill.teacher"
    path = ctx.recipe.resolve(teacher)
    state = read_state_dict(path, where=where)  # a missing, unreadable or damaged file is an InputError
    module = ctx.build_module()
    try:
        load_state(module, state, path)
    except InputError as exc:
        raise InputError(exc.what, where=where, got=exc.got, expected=exc.expected,
                         fix="the teacher is built from model.source/model.args: give a state_dict "
                             "of that (unpruned) architecture") from exc
    return module.eval()


def augment_for(choice: str, data_spec) -> Augment:
    """``augment:`` for the recipe's dataset, padding with its normalized black."""
    from modelzip.sources.data import DEFAULT_NORMALIZE

    if data_spec.normalize is not None:
        normalize = (data_spec.normalize.mean, data_spec.normalize.std)
    else:
        normalize = DEFAULT_NORMALIZE.get(data_spec.dataset)
    return choose_augment(choice, data_spec.dataset, normalize)


def _fingerprint(artifact, config, ctx) -> str:
    # The step key covers the data, teacher file and device too; the rest guards a resume
    # directory reused by hand or a context built without a key.
    blob = f"{ctx.key}|{artifact.id}|{config.model_dump_json()}|{ctx.seed}|{ctx.device}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- report


def _record(ctx, config, settings: TrainSettings, result: FitResult, augment: Augment, objective,
            pruning: dict[str, Any] | None) -> None:
    if pruning is not None:
        # Top level, as prune records it: findings warn about a layer left entirely zero.
        # effect "masked", as prune's magnitude method records: zeros in dense shapes, no speedup.
        ctx.record(layer_sparsity=pruning.pop("layer_sparsity"), pruning=pruning, effect="masked")
    distill = None
    if config.distill is not None:
        distill = config.distill.model_dump()
    sparsity = result.sparsity
    ctx.record(
        curve=result.history, epochs_run=len(result.history), optimizer_steps=result.total_steps,
        best_epoch=result.best_epoch, best_val_accuracy=result.best_val_accuracy,
        stopped_early=result.stopped_early, resumed_after_epoch=result.resumed_after_epoch,
        wall_time_s=round(result.wall_time_s, 3), distilled=objective.distills, distill=distill,
        augment=augment.describe(), device=settings.device,
        mixed_precision=settings.device.startswith("cuda"), sparsity_preserved=sparsity,
        summary=_summary(config, result, sparsity, pruning))


def _summary(config, result: FitResult, sparsity: dict[str, Any], pruning: dict[str, Any] | None) -> str:
    parts = [f"{len(result.history)} epoch{'s' if len(result.history) != 1 else ''} "
             f"{config.optimizer} lr {config.lr:g} {config.schedule}"]
    if config.distill is not None:
        d = config.distill
        parts.append(f"distilled from {d.teacher} (alpha {d.alpha:g}, T {d.temperature:g})")
    if pruning is not None:
        parts.append(pruning["summary"])
    if result.best_epoch is not None:
        parts.append(f"best val {result.best_val_accuracy:.4f} at epoch {result.best_epoch}")
    if result.stopped_early:
        parts.append("stopped early")
    if sparsity["masked_tensors"]:
        parts.append(f"{sparsity['zero_fraction']:.1%} zeros kept in {sparsity['masked_tensors']} tensors")
    return "; ".join(parts)
