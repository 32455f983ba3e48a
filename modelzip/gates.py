"""CI gates: compare the final record with the baseline; failures exit 1."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from modelzip.evaluation.records import Final, GateResult, StepRecord

if TYPE_CHECKING:
    from modelzip.recipe import Gates


def check_gates(gates: Gates, final: Final, teachers: Mapping[str, float] | None = None) -> list[GateResult]:
    """One result per gate the recipe sets, in a fixed order; reads the final record's ratios
    (``teachers``: each task's teacher accuracy, from a merge step; see teacher_accuracy)."""
    ratios = final.ratios
    accuracy = final.metrics.accuracy
    results = []
    if final.metrics.task_accuracy:
        results += _task_gates(gates, final)
    else:
        if gates.max_accuracy_drop is not None:
            drop = ratios.accuracy_drop  # input model (torch) - final
            results.append(GateResult("max_accuracy_drop", drop <= gates.max_accuracy_drop + 1e-12, drop,
                                      f"<= {gates.max_accuracy_drop}"))
        if gates.min_accuracy is not None:
            results.append(GateResult("min_accuracy", accuracy >= gates.min_accuracy, accuracy,
                                      f">= {gates.min_accuracy}"))
    if gates.max_drop_vs_teacher is not None:
        results += _teacher_gates(gates, final, teachers or {})
    if gates.min_size_ratio is not None:
        results.append(GateResult("min_size_ratio", ratios.size >= gates.min_size_ratio, ratios.size,
                                  f">= {gates.min_size_ratio}"))
    if gates.min_speedup is not None:
        got = ratios.speedup  # None when latency was not measured: the gate fails, got "n/a"
        results.append(GateResult("min_speedup", got is not None and got >= gates.min_speedup, got,
                                  f">= {gates.min_speedup} (latency at data.batch_size)"))
    return results


def _task_gates(gates: Gates, final: Final) -> list[GateResult]:
    """A multi-task model's accuracy gates, one per task (``max_accuracy_drop[cls]``), so the
    gate line says which task failed; one number in the recipe applies to every task."""
    tasks = tuple(task for task, _ in final.metrics.task_accuracy)
    results = []
    for task, limit in gates.per_task("max_accuracy_drop", tasks).items():
        drop = final.ratios.task_drop(task)
        results.append(GateResult(f"max_accuracy_drop[{task}]", drop <= limit + 1e-12, drop, f"<= {limit}"))
    for task, limit in gates.per_task("min_accuracy", tasks).items():
        got = final.metrics.of_task(task)
        results.append(GateResult(f"min_accuracy[{task}]", got >= limit, got, f">= {limit}"))
    return results


def teacher_accuracy(steps: Sequence[StepRecord]) -> dict[str, float]:
    """{task: accuracy} of the teachers the last merge step distilled from (empty without one)."""
    for step in reversed(steps):
        merge: Any = step.details.get("merge")
        if isinstance(merge, dict) and isinstance(merge.get("accuracy"), dict):
            return {task: entry["teacher"] for task, entry in merge["accuracy"].items()}
    return {}


def _teacher_gates(gates: Gates, final: Final, teachers: Mapping[str, float]) -> list[GateResult]:
    """``max_drop_vs_teacher[task]``: teacher accuracy - the final model's, per task (the final
    model's on the eval split, as every accuracy gate reads it)."""
    results = []
    tasks = tuple(task for task, _ in final.metrics.task_accuracy) or tuple(teachers)
    for task, limit in gates.per_task("max_drop_vs_teacher", tasks).items():
        teacher = teachers.get(task)
        got = final.metrics.of_task(task) if final.metrics.task_accuracy else final.metrics.accuracy
        drop = None if teacher is None or got is None else teacher - got  # None: the gate fails, "n/a"
        results.append(GateResult(f"max_drop_vs_teacher[{task}]", drop is not None and drop <= limit + 1e-12,
                                  drop, f"<= {limit} (teacher {teacher:.4f})" if teacher is not None
                                  else f"<= {limit} (no teacher measured)"))
    return results
