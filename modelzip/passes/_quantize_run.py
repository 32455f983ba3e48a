"""The quantize pass at run time: its config and context mapped onto modelzip.quantization.

Imports torch and onnxruntime, so modelzip/passes/quantize.py imports it inside ``run`` only.
A torch input is exported by the export pass's own export and parity check (its defaults:
dynamo, opset 18, dynamic batch); mode qat trains first, through the shared training loop.
"""
from __future__ import annotations

import contextlib
import copy
import shutil

from modelzip.errors import PassError
from modelzip.finetuning.distill import TeacherMismatch
from modelzip.finetuning.loop import Hooks, NonFiniteLoss, TrainSettings
from modelzip.passes._training import checkpoint_store, objective_for, teacher_mismatch_error
from modelzip.passes.export import ExportConfig, export_checked
from modelzip.quantization import QuantizeFailure, qat
from modelzip.quantization.run import quantize_onnx
from modelzip.quantization.settings import Progress, QuantizeSettings, Timing


def run_quantize(artifact, config, ctx, *, pass_name: str):
    scratch = ctx.work_dir / "scratch"
    scratch.mkdir(exist_ok=True)
    try:
        if config.lowbit:
            return _run_lowbit(artifact, config, ctx, pass_name, scratch)
        trained = None
        if config.mode == "qat":  # train first; the trained float model is what gets exported
            trained = _train(artifact, config, ctx, pass_name)
            artifact = artifact.evolve(module=trained.module)
        source, parity = _float_source(artifact, scratch, ctx, pass_name)
        result = quantize_onnx(source, settings(config), data=ctx.data,
                               input_shape=tuple(artifact.input_shape), timing=timing(ctx.recipe),
                               work_dir=ctx.work_dir, scratch=scratch, seed=ctx.seed,
                               progress=Progress(log=ctx.log, track=ctx.track), trained=trained)
    except QuantizeFailure as failure:
        raise PassError(failure.what, pass_name=pass_name, step=ctx.step, **failure.fields()) from failure
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # intermediate models: not part of the cache entry
    ctx.record(**result.details.to_json())
    if parity is not None:
        ctx.record(export_parity=parity)
    return artifact.evolve(kind="onnx", path=result.path, module=None)


def _run_lowbit(artifact, config, ctx, pass_name: str, scratch):
    """qat with sub-8-bit weights (or float activations): train on the grids, export the baked
    model, store its weights small (modelzip/quantization/lowbit*.py)."""
    from modelzip.quantization.lowbit_run import quantize_lowbit

    grids, auto = _grids(artifact, config, ctx, pass_name)
    trained = _train_lowbit(artifact, config, ctx, pass_name, grids)
    auto = _verify_auto(auto, trained, ctx)
    baked = artifact.evolve(module=trained.module)
    source, parity = _float_source(baked, scratch, ctx, pass_name)
    result = quantize_lowbit(source, trained, data=ctx.data, input_shape=tuple(artifact.input_shape),
                             timing=timing(ctx.recipe), work_dir=ctx.work_dir, scratch=scratch, seed=ctx.seed,
                             progress=Progress(log=ctx.log, track=ctx.track), auto=auto,
                             activations=config.lowbit_activations)
    ctx.record(**result.details.to_json(), export_parity=parity)
    return artifact.evolve(kind="onnx", path=result.path, module=None)


def _grids(artifact, config, ctx, pass_name: str):
    """(module name -> grid, the auto plan's report or None)."""
    from modelzip.quantization import lowbit, lowbit_auto

    _needs_torch(artifact, ctx, pass_name)
    exclude = tuple(config.exclude)
    if config.weights != "auto":
        return lowbit.plan(artifact.module, config.weights, config.int8_layers, exclude), None
    module = copy.deepcopy(artifact.module)
    names = lowbit.layer_names(module, exclude)
    fixed = lowbit.kept_int8(names, config.int8_layers) if config.int8_layers else set()
    fp32 = _fp32_bytes(artifact, ctx)
    weights = 4 * sum(module.get_submodule(name).weight.numel() for name in names)
    ctx.log(f"weights auto: sensitivity of {len(names)} layers x {len(lowbit_auto.CANDIDATES)} grids")
    budget = None if config.target_size is None else int(config.target_size * fp32)
    plan = lowbit_auto.choose(module, ctx.data, names, budget_bytes=budget,
                              max_accuracy_drop=config.max_accuracy_drop,
                              other_bytes=max(fp32 - weights, 0), fixed=fixed)
    return plan.grids, {**plan.to_json(), "fp32_bytes": fp32, "target_size": config.target_size}


def _verify_auto(auto, trained, ctx):
    """weights: auto: the plan with the trained model's measured drop (the budget, checked)."""
    from modelzip.quantization import lowbit_auto

    if auto is None:
        return None
    verified = lowbit_auto.verify(auto, trained.reference, ctx.data)
    if verified.get("within_budget") is False:
        ctx.log(f"weights auto: the trained model drops {verified['drop']:.4f} on the validation images, over "
                f"max_accuracy_drop {auto['max_accuracy_drop']} (predicted {auto['predicted_drop']:.4f}): "
                "more epochs, or a smaller max_accuracy_drop, would help")
    return {**auto, "verified": verified}


def _fp32_bytes(artifact, ctx) -> int:
    """The fp32 ONNX file's size: the pipeline's export of the input, else 4 bytes per parameter."""
    exported = ctx.exported(artifact)
    if exported is not None:
        return exported[0].stat().st_size
    return 4 * sum(p.numel() for p in artifact.module.parameters())


def _train_lowbit(artifact, config, ctx, pass_name: str, grids: dict[str, str]):
    from modelzip.quantization import lowbit

    objective = objective_for(config.distill, 0.0, artifact, ctx, pass_name)
    settings = TrainSettings(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                             seed=ctx.seed + lowbit.SEED_OFFSET, device=ctx.device)
    hooks = Hooks(log=ctx.log, track=ctx.track, checkpoints=checkpoint_store(artifact, config, ctx))
    with _training_errors(config, ctx, pass_name):
        return lowbit.train(artifact.module, ctx.data, settings, objective, grids, hooks=hooks,
                            activations=config.lowbit_activations)


def settings(config) -> QuantizeSettings:
    return QuantizeSettings(
        mode=config.mode, exclude=tuple(config.exclude), calibration_samples=config.calibration_samples,
        calibration_batch_size=config.calibration_batch_size, method=config.method,
        percentile=config.percentile, activations=config.activations,
        activations_given="activations" in config.model_fields_set, per_channel=config.per_channel,
        reduce_range=config.reduce_range, placement=config.placement, bits=config.bits,
        block_size=config.block_size, compute=config.compute, max_accuracy_drop=config.max_accuracy_drop,
        max_float_layers=config.max_float_layers, prefer=config.prefer)


def timing(recipe) -> Timing:
    evaluation = recipe.evaluation
    return Timing(batch_size=recipe.data.batch_size, threads=evaluation.threads,
                  warmup=evaluation.warmup, repeats=evaluation.repeats, tolerance=evaluation.latency_tolerance)


def _float_source(artifact, scratch, ctx, pass_name: str):
    """(the float ONNX to quantize, the export's parity record or None for an ONNX input).

    The pipeline's export of this very model is reused when there is one (the input, say, exported
    for the baseline); a model trained here has a new id (Artifact.evolve), so it is exported."""
    if artifact.kind == "onnx":
        return artifact.path, None
    reused = ctx.exported(artifact)
    if reused is not None:
        path, details = reused
        ctx.record(float_export="the pipeline's export of this model (the baseline's), reused")
        return path, details.get("parity")
    directory = scratch / "export"  # the export writes node_modules.json beside the file
    directory.mkdir()
    path = directory / "model.onnx"
    parity = export_checked(artifact, path, ExportConfig(), ctx, pass_name=pass_name)
    return path, parity


def _train(artifact, config, ctx, pass_name: str) -> qat.Trained:
    """Quantization-aware fine-tuning of the torch input (qat mode)."""
    _needs_torch(artifact, ctx, pass_name)
    data = ctx.data
    objective = objective_for(config.distill, 0.0, artifact, ctx, pass_name)
    settings = TrainSettings(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                             seed=ctx.seed + qat.SEED_OFFSET, device=ctx.device)
    with _training_errors(config, ctx, pass_name):
        return qat.train(artifact.module, data, settings, objective, exclude=tuple(config.exclude),
                         reduce_range=config.reduce_range, hooks=Hooks(log=ctx.log, track=ctx.track))


def _needs_torch(artifact, ctx, pass_name: str) -> None:
    if artifact.kind != "torch":
        raise PassError("mode qat trains the torch model, but this step receives an ONNX model",
                        pass_name=pass_name, step=ctx.step, got="an ONNX artifact",
                        expected="a torch model (QAT fine-tunes it before export)",
                        fix="put quantize: {mode: qat} before export (it exports by itself)")


@contextlib.contextmanager
def _training_errors(config, ctx, pass_name: str):
    """The training loop's failures as PassErrors."""
    try:
        yield
    except TeacherMismatch as exc:
        raise teacher_mismatch_error(exc, ctx, pass_name) from exc
    except NonFiniteLoss as exc:
        raise PassError(f"the QAT loss became {exc.value} at epoch {exc.epoch}, iteration {exc.iteration}",
                        pass_name=pass_name, step=ctx.step, got=f"loss {exc.value} with lr {exc.lr:.3g}",
                        expected="a finite loss", fix=f"lower lr (e.g. lr: {config.lr / 10:g})") from exc
