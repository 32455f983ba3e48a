"""The merge pass at run time: teachers loaded, the student distilled from them, then compared.

Imports torch, so modelzip.passes.merge imports it inside ``run`` only. Training reuses the
finetune pass's settings and loop (modelzip.passes._training); modelzip.merging holds the teacher
ensemble and the comparison, which never see the context.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from modelzip.errors import InputError, PassError
from modelzip.finetuning.distill import make_objective
from modelzip.finetuning.loop import Hooks
from modelzip.merging import TeacherEnsemble, TeacherOutputMismatch, check_teachers
from modelzip.merging.compare import footprint, time_against_teachers, total
from modelzip.passes._training import augment_for, checkpoint_store, train_module, train_settings
from modelzip.recipe import ModelSpec
from modelzip.sources.models import load_input_model
from modelzip.tasks import TaskMismatch

EXPORT_OPSET = 18  # the export pass's default, so the timed files are like the pipeline's own


def run_merge(artifact, config, ctx, *, pass_name: str):
    # validate made sure there is one teacher per task; a single-task student has one, by any name
    names = tuple(ctx.recipe.model.tasks or config.teachers)
    ensemble = TeacherEnsemble({task: _load_teacher(task, config.teachers[task], ctx, pass_name)
                                for task in names})
    _check_fit(ensemble, artifact, ctx, pass_name)
    objective = make_objective(ensemble, alpha=config.alpha, temperature=config.temperature,
                               label_smoothing=config.label_smoothing, task_weights=ctx.recipe.model.task_weights)
    augment = augment_for(config.augment, ctx.recipe.data)
    settings = train_settings(config, ctx, augment)
    hooks = Hooks(log=ctx.log, track=ctx.track, checkpoints=checkpoint_store(artifact, config, ctx))
    trained = train_module(artifact.module, settings, objective, hooks, config=config, ctx=ctx,
                           pass_name=pass_name)
    comparison = _compare(trained.module, ensemble, artifact.input_shape, ctx, pass_name)
    _record(ctx, config, trained.result, comparison)
    return artifact.evolve(module=trained.module)


def _load_teacher(task: str, teacher, ctx, pass_name: str):
    """The teacher of ``task`` (a TeacherSpec) built and loaded like model, in eval mode."""
    where = f"passes[{ctx.step}].{pass_name}.teachers.{task}"
    spec = ModelSpec(source=teacher.source, args=teacher.args, checkpoint=teacher.checkpoint,
                     in_channels=teacher.in_channels, input_shape=ctx.recipe.model.input_shape)
    try:
        return load_input_model(spec, ctx.recipe.base_dir)
    except InputError as exc:  # its `where` says model.*: these are the teacher's keys
        place = (exc.where or "").replace("model.", f"{where}.", 1) if exc.where else where
        raise InputError(exc.what, where=place, got=exc.got, expected=exc.expected, fix=exc.fix) from exc


def _check_fit(ensemble: TeacherEnsemble, artifact, ctx, pass_name: str) -> None:
    """Every teacher takes the student's input and gives logits shaped like its head."""
    import torch

    sample = torch.zeros((2, *artifact.input_shape[1:]))
    try:  # on a CPU copy: the input artifact stays where it is, as it is
        check_teachers(ensemble, copy.deepcopy(artifact.module).cpu(), sample)
    except TeacherOutputMismatch as exc:
        raise PassError(f"the teacher of task {exc.task!r} does not fit the student", pass_name=pass_name,
                        step=ctx.step, got=exc.got, expected=exc.expected,
                        fix=f"give teachers.{exc.task} a single-task model of that task (same input, "
                            "same classes)") from exc
    except TaskMismatch as exc:
        raise PassError(f"the student has no output for task {exc.task!r}", pass_name=pass_name,
                        step=ctx.step, got=exc.got, expected=exc.expected,
                        fix="the recipe's model is the student: one output per task of model.tasks") from exc


# --------------------------------------------------------------------------- comparison


def _compare(student, ensemble: TeacherEnsemble, input_shape, ctx, pass_name: str) -> dict[str, Any]:
    """The student against the sum of the teachers, and each task against its teacher."""
    from modelzip.evaluation.accuracy import torch_task_accuracies
    from modelzip.onnx_export import export_onnx

    student = student.cpu().eval()
    data = ctx.data
    teacher_accuracy = _by_task(torch_task_accuracies(ensemble, data.batches("eval")).by_task, ensemble)
    student_accuracy = _by_task(torch_task_accuracies(student, data.batches("eval")).by_task, ensemble)
    with tempfile.TemporaryDirectory(prefix="merge-") as scratch:
        def export(module, name: str, tasks) -> Path:
            path = Path(scratch) / f"{name}.onnx"
            export_onnx(module, input_shape, path, opset=EXPORT_OPSET, exporter="dynamo", dynamic_batch=True,
                        pass_name=pass_name, step=ctx.step, tasks=tasks)
            return path

        student_path = export(student, "student", ctx.recipe.model.tasks)
        teacher_paths = {task: export(teacher, f"teacher-{task}", None)
                         for task, teacher in ensemble.teachers.items()}
        student_size = footprint(student, input_shape, student_path)
        teacher_sizes = {task: footprint(ensemble.teachers[task], input_shape, path)
                         for task, path in teacher_paths.items()}
        latency = _latency(student_path, list(teacher_paths.values()), input_shape, ctx)
    return {"student": student_size.to_json(), "teachers": {t: f.to_json() for t, f in teacher_sizes.items()},
            "teachers_total": total(list(teacher_sizes.values())).to_json(),
            "accuracy": {task: {"teacher": round(teacher_accuracy[task], 6),
                                "student": round(student_accuracy[task], 6),
                                "drop": round(teacher_accuracy[task] - student_accuracy[task], 6)}
                         for task in ensemble.teachers},
            "latency": latency}


def _by_task(accuracy: dict[str, float], ensemble: TeacherEnsemble) -> dict[str, float]:
    """Accuracies by teacher name (a single-task model's plain labels are the task "")."""
    if set(accuracy) == {""}:
        return dict.fromkeys(ensemble.teachers, accuracy[""])
    return accuracy


def _latency(student: Path, teachers: list[Path], input_shape, ctx) -> list[dict[str, Any]] | None:
    """At batch 1 and data.batch_size, with the recipe's evaluation settings; None when
    ``evaluation.latency`` is off."""
    settings = ctx.recipe.evaluation
    if not settings.latency:
        return None
    timings = []
    for batch in sorted({1, ctx.recipe.data.batch_size}):
        ctx.log(f"timing the student against the teachers at batch {batch}")
        timings.append(time_against_teachers(
            student, teachers, tuple(input_shape), batch, threads=settings.threads, warmup=settings.warmup,
            repeats=settings.repeats, seed=ctx.seed, tolerance=settings.latency_tolerance).to_json())
    return timings


# --------------------------------------------------------------------------- report


def _record(ctx, config, result, comparison: dict[str, Any]) -> None:
    student, teachers = comparison["student"], comparison["teachers_total"]
    ratios = {key: round(student[key] / teachers[key], 4) if teachers[key] else None
              for key in ("params", "macs", "onnx_bytes")}
    merge = {**comparison, "ratio_to_teachers": ratios, "alpha": config.alpha, "temperature": config.temperature}
    ctx.record(merge=merge, curve=result.history, epochs_run=len(result.history),
               optimizer_steps=result.total_steps, best_epoch=result.best_epoch,
               best_val_accuracy=result.best_val_accuracy, stopped_early=result.stopped_early,
               resumed_after_epoch=result.resumed_after_epoch, wall_time_s=round(result.wall_time_s, 3),
               distilled=True, summary=_summary(merge))
    ctx.record_table("Student vs teachers", ["", "student", "teachers (sum)", "student / teachers"],
                     _footprint_rows(student, teachers, ratios) + _latency_rows(comparison["latency"]))
    ctx.record_table("Accuracy per task vs its teacher (eval split, torch)",
                     ["task", "teacher", "student", "student - teacher"],
                     [[task, f"{a['teacher']:.2%}", f"{a['student']:.2%}", f"{_pp(a['drop'])} pp"]
                      for task, a in comparison["accuracy"].items()])


def _footprint_rows(student: dict, teachers: dict, ratios: dict) -> list[list[Any]]:
    labels = {"params": "parameters", "macs": "MACs per sample", "onnx_bytes": "fp32 ONNX bytes"}
    return [[label, f"{student[key]:,}", f"{teachers[key]:,}", f"{ratios[key]:.1%}" if ratios[key] else "n/a"]
            for key, label in labels.items()]


def _latency_rows(latency: list[dict[str, Any]] | None) -> list[list[Any]]:
    return [[f"latency at batch {t['batch']} (ms)", f"{t['student_ms']:.3f}", f"{t['teachers_ms']:.3f}",
             f"{1 / t['speedup']:.1%} ({t['speedup']:.2f}x {t['verdict']})"] for t in latency or []]


def _pp(drop: float) -> str:
    """Student minus teacher in percentage points, signed (never -0.00)."""
    return f"{-100 * drop + 0.0:+.2f}"


def _summary(merge: dict[str, Any]) -> str:
    parts = [f"{len(merge['teachers'])} teachers -> 1 student, {merge['ratio_to_teachers']['params']:.0%} "
             "of their parameters"]
    if merge["latency"]:
        t = merge["latency"][-1]
        parts.append(f"{t['speedup']:.2f}x their latency at batch {t['batch']} ({t['verdict']})")
    parts.append(", ".join(f"{task} {_pp(a['drop'])} pp vs teacher" for task, a in merge["accuracy"].items()))
    return "; ".join(parts)
