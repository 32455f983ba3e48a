"""What the pipeline measured, as frozen records; ``to_json()`` of each IS its part of report.json.

docs/report.md documents the schema (``modelzip.report/1``); tests/golden/report_tiny.json pins it.
``from_json`` reads back what the step cache stored (Metrics, LatencyResult) and what report.md is
rendered from (report.json on disk), so the ``batch_<n>`` keys are written and parsed here only.
No heavy imports: the CLI prints from these records.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from modelzip.evaluation.latency import SAME_MODEL

REPORT_SCHEMA = "modelzip.report/1"
_BATCH = "batch_"


def accuracy_noise(accuracy: float, samples: int) -> float:
    """Twice the standard error of a top-1 accuracy measured on ``samples`` images (binomial, with
    a floor for accuracies near 0 or 1): smaller differences are not evidence of a change
    (0.57 pp at 91% on 10,000 images, 2.5 pp at 90% on 2,000)."""
    return 2 * math.sqrt(max(accuracy * (1 - accuracy), 0.01) / max(samples, 1))


def batch_key(batch: int) -> str:
    return f"{_BATCH}{batch}"


def _batch_of(key: str) -> int | None:
    """``batch_64`` -> 64; None for other keys (such as "cached")."""
    return int(key.removeprefix(_BATCH)) if key.startswith(_BATCH) else None


@dataclass(frozen=True)
class Metrics:
    """Accuracy on the eval split plus parameters, MACs and size of one artifact.

    ``accuracy`` and ``eval_samples`` are None where accuracy was not evaluated (an intermediate
    step under ``evaluation.steps: final``); the other fields are always measured.
    """

    accuracy: float | None
    accuracy_backend: str  # "torch" or "onnxruntime": the backend it is (or would be) measured in
    eval_samples: int | None
    params_total: int
    params_nonzero: int
    macs: int  # per sample
    size_bytes: int  # torch: serialized state_dict; ONNX: the file
    zip_bytes: int | None = None  # ONNX only: the file after deflate
    # A multi-task model's top-1 per task, in model.tasks order (``accuracy`` is their mean);
    # () for a single-task model, whose report.json has no "task_accuracy" key.
    task_accuracy: tuple[tuple[str, float], ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = {"accuracy": self.accuracy, "accuracy_backend": self.accuracy_backend,
               "eval_samples": self.eval_samples, "params_total": self.params_total,
               "params_nonzero": self.params_nonzero, "macs": self.macs, "size_bytes": self.size_bytes}
        if self.zip_bytes is not None:
            out["zip_bytes"] = self.zip_bytes
        if self.task_accuracy:
            out["task_accuracy"] = dict(self.task_accuracy)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Metrics:
        return cls(d["accuracy"], d["accuracy_backend"], d["eval_samples"], d["params_total"],
                   d["params_nonzero"], d["macs"], d["size_bytes"], d.get("zip_bytes"),
                   tuple((d.get("task_accuracy") or {}).items()))

    @property
    def evaluated(self) -> bool:
        return self.accuracy is not None

    def with_accuracy(self, accuracy: float, eval_samples: int,
                      task_accuracy: dict[str, float] | None = None) -> Metrics:
        return replace(self, accuracy=accuracy, eval_samples=eval_samples,
                       task_accuracy=tuple((task_accuracy or {}).items()))

    def of_task(self, task: str) -> float | None:
        """One task's accuracy (None: not evaluated, or no such task)."""
        return dict(self.task_accuracy).get(task)


@dataclass(frozen=True)
class Timing:
    """One model's latency at one batch size, as reported (ms rounded to 4 digits)."""

    batch: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    threads: int
    # The distribution: latency.QUANTILES (5th, 25th, 50th, 75th, 95th percentile) in ms;
    # empty in records written before it was kept.
    quantiles_ms: tuple[float, ...] = ()

    @classmethod
    def of(cls, latency) -> Timing:
        """From a modelzip.evaluation.latency.Latency (which also holds every run's time)."""
        from modelzip.evaluation.latency import quantiles_ms

        return cls(latency.batch, round(latency.median_ms, 4), round(latency.p90_ms, 4),
                   round(latency.mean_ms, 4), latency.runs, latency.threads,
                   tuple(round(q, 4) for q in quantiles_ms(latency.times_ns)))

    def to_json(self) -> dict[str, Any]:
        return {"batch": self.batch, "median_ms": self.median_ms, "p90_ms": self.p90_ms,
                "mean_ms": self.mean_ms, "runs": self.runs, "threads": self.threads,
                "quantiles_ms": list(self.quantiles_ms)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Timing:
        return cls(d["batch"], d["median_ms"], d["p90_ms"], d["mean_ms"], d["runs"], d["threads"],
                   tuple(d.get("quantiles_ms", ())))


@dataclass(frozen=True)
class LatencyPair:
    """Baseline vs final at one batch size: both timings, the speedup, its 95% interval, the verdict."""

    batch: int
    baseline: Timing
    final: Timing
    ratio: float  # baseline median / final median: > 1 means the final model is faster
    ci_low: float
    ci_high: float
    pairs: int  # paired rounds the interval comes from (0: the same file, measured once)
    verdict: str  # one of modelzip.evaluation.latency.VERDICTS
    stopped: str | None = None  # why timing ended (latency.STOP_REASONS); None in older records

    @property
    def same_model(self) -> bool:
        return self.verdict == SAME_MODEL

    @classmethod
    def of(cls, batch: int, baseline, final, comparison) -> LatencyPair:
        """From compare_latency's (Latency, Latency, Comparison); the interval rounded to 4 digits."""
        return cls(batch, Timing.of(baseline), Timing.of(final), round(comparison.ratio, 4),
                   round(comparison.ci_low, 4), round(comparison.ci_high, 4), comparison.pairs,
                   comparison.verdict, final.stopped)

    def to_json(self) -> dict[str, Any]:  # the batch is the key it is stored under
        out = {"baseline": self.baseline.to_json(), "final": self.final.to_json(), "ratio": self.ratio,
               "ci_low": self.ci_low, "ci_high": self.ci_high, "pairs": self.pairs, "verdict": self.verdict}
        if self.stopped is not None:
            out["stopped"] = self.stopped
        return out

    @classmethod
    def from_json(cls, batch: int, d: dict[str, Any]) -> LatencyPair:
        return cls(batch, Timing.from_json(d["baseline"]), Timing.from_json(d["final"]), d["ratio"],
                   d["ci_low"], d["ci_high"], d["pairs"], d["verdict"], d.get("stopped"))


@dataclass(frozen=True)
class LatencyResult:
    """The latency pairs of a run, one per batch size (ascending), and whether they came from the cache."""

    pairs: tuple[LatencyPair, ...]
    cached: bool = False

    def at(self, batch: int) -> LatencyPair | None:
        return next((p for p in self.pairs if p.batch == batch), None)

    @property
    def headline(self) -> LatencyPair | None:
        """The pair at data.batch_size (the largest measured): the one the headline speedup is."""
        return self.pairs[-1] if self.pairs else None

    def to_json(self, *, with_cached: bool = True) -> dict[str, Any]:
        """``with_cached=False``: the shape stored in the step cache (no "cached" flag)."""
        out: dict[str, Any] = {batch_key(p.batch): p.to_json() for p in self.pairs}
        if with_cached:
            out["cached"] = self.cached
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], *, cached: bool | None = None) -> LatencyResult:
        pairs = tuple(LatencyPair.from_json(b, v) for b, v in
                      sorted((_batch_of(k), v) for k, v in d.items() if _batch_of(k) is not None))
        return cls(pairs, bool(d.get("cached", False)) if cached is None else cached)


@dataclass(frozen=True)
class Ratios:
    """Final vs the fp32 baseline ONNX measured in the same run (> 1 means better)."""

    size: float  # baseline ONNX bytes / final bytes
    zip_size: float
    accuracy_delta: float  # final - input model (Baseline.reference); negative is a loss
    accuracy_delta_vs_onnx: float
    speedups: tuple[tuple[int, float], ...] = ()  # (batch, baseline/final median), ascending batch
    speedup: float | None = None  # at data.batch_size: what gates.min_speedup checks
    # A multi-task model's final - input accuracy per task (model.tasks order); () for one task.
    task_deltas: tuple[tuple[str, float], ...] = ()

    def task_drop(self, task: str) -> float:
        """Input model - final accuracy of one task (what a per-task max_accuracy_drop checks)."""
        return 0.0 - dict(self.task_deltas)[task]

    @property
    def accuracy_drop(self) -> float:
        """Input model accuracy (Baseline.reference) - final accuracy (what gates.max_accuracy_drop checks).

        ``0.0 -``, not unary minus: no drop is 0.0, not -0.0 (which report.json would print as -0.0
        and report.md as "-0"); otherwise exactly ``torch - final`` (IEEE subtraction is symmetric).
        """
        return 0.0 - self.accuracy_delta

    @classmethod
    def between(cls, final: Metrics, baseline: Baseline, latency: LatencyResult | None,
                batch_size: int) -> Ratios:
        onnx = baseline.onnx
        speedups = tuple((p.batch, p.ratio) for p in latency.pairs) if latency else ()
        return cls(size=onnx.size_bytes / final.size_bytes, zip_size=onnx.zip_bytes / final.zip_bytes,
                   accuracy_delta=final.accuracy - baseline.reference.accuracy,
                   accuracy_delta_vs_onnx=final.accuracy - onnx.accuracy, speedups=speedups,
                   speedup=dict(speedups)[batch_size] if latency else None,
                   task_deltas=tuple((task, accuracy - baseline.reference.of_task(task))
                                     for task, accuracy in final.task_accuracy))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"size": self.size, "zip_size": self.zip_size, "accuracy_delta": self.accuracy_delta,
                               "accuracy_delta_vs_onnx": self.accuracy_delta_vs_onnx}
        out.update({f"speedup_{batch_key(b)}": r for b, r in self.speedups})
        if self.speedup is not None:
            out["speedup"] = self.speedup
        if self.task_deltas:
            out["task_accuracy_delta"] = dict(self.task_deltas)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Ratios:
        prefix = f"speedup_{_BATCH}"
        speedups = tuple(sorted((int(k.removeprefix(prefix)), v) for k, v in d.items() if k.startswith(prefix)))
        return cls(d["size"], d["zip_size"], d["accuracy_delta"], d["accuracy_delta_vs_onnx"], speedups,
                   d.get("speedup"), tuple((d.get("task_accuracy_delta") or {}).items()))


@dataclass(frozen=True)
class Baseline:
    """The input model in torch and its fp32 ONNX export in onnxruntime: the reference for ratios.

    Under ``evaluation.steps: final`` the torch model's accuracy is not evaluated: the export's
    parity check ties its logits to the ONNX file's, and the ONNX accuracy is the reference.
    """

    torch: Metrics  # the input model (an "onnx:" input: that file's stats)
    onnx: Metrics  # of the exported file, optimized as the recipe writes its final file
    export: dict[str, Any] | None  # what the export pass recorded (opset, exporter, parity, summary); None: ONNX input
    optimize: dict[str, Any] | None = None  # what the optimize pass recorded; None under `optimize: false`
    onnx_artifact: Any = field(default=None, compare=False)  # the measured Artifact (not in the report)

    @property
    def reference(self) -> Metrics:
        """The input model's accuracy that drops and deltas are taken from: torch where evaluated."""
        return self.torch if self.torch.evaluated else self.onnx

    def to_json(self) -> dict[str, Any]:
        return {"torch": self.torch.to_json(), "onnx": self.onnx.to_json(), "export": self.export,
                "optimize": self.optimize, "accuracy_reference": "torch" if self.torch.evaluated else "onnx"}


@dataclass(frozen=True)
class StepRecord:
    """One pass of the recipe: what ran, whether it came from the cache, and the metrics of its output."""

    index: int
    pass_name: str
    params: dict[str, Any]
    key: str  # cache key
    cached: bool
    kind: str  # "torch" or "onnx"
    wall_time_s: float  # of the run that produced it
    details: dict[str, Any]  # what the pass recorded (ctx.record, ctx.record_table)
    metrics: Metrics
    implicit: bool = False  # a step the pipeline added: export after a final torch model, the final optimize

    def to_json(self) -> dict[str, Any]:
        out = {"index": self.index, "pass": self.pass_name, "params": self.params, "key": self.key,
               "cached": self.cached, "kind": self.kind, "wall_time_s": self.wall_time_s,
               "details": self.details, "metrics": self.metrics.to_json()}
        if self.implicit:
            out["implicit"] = True
        return out


@dataclass(frozen=True)
class Final:
    """The final ONNX: its metrics and lineage, the baseline's sizes, latency of both, the ratios."""

    artifact: str  # file name in the output folder
    id: str
    metrics: Metrics
    lineage: tuple[dict[str, Any], ...]
    baseline_size_bytes: int
    baseline_zip_bytes: int
    latency: LatencyResult | None  # None when evaluation.latency is false
    threads: int  # onnxruntime intra-op threads for accuracy and latency
    ratios: Ratios
    name_map: str | None = None  # file beside the artifact: old -> new names (an optimize step's)

    def to_json(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "id": self.id, **self.metrics.to_json(), "lineage": list(self.lineage),
                "baseline_size_bytes": self.baseline_size_bytes, "baseline_zip_bytes": self.baseline_zip_bytes,
                "latency": None if self.latency is None else self.latency.to_json(), "threads": self.threads,
                "ratios": self.ratios.to_json(), "name_map": self.name_map}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Final:
        """report.json's ``final`` (e.g. for ``modelzip compare``; reports before name maps lack one)."""
        latency = d["latency"]
        return cls(d["artifact"], d["id"], Metrics.from_json(d), tuple(d["lineage"]), d["baseline_size_bytes"],
                   d["baseline_zip_bytes"], None if latency is None else LatencyResult.from_json(latency),
                   d["threads"], Ratios.from_json(d["ratios"]), d.get("name_map"))


@dataclass(frozen=True)
class GateResult:
    """One gate of the recipe checked against the final record."""

    name: str
    passed: bool
    got: float | None
    expected: str

    def format(self) -> str:
        got = "n/a" if self.got is None else f"{self.got:.4g}"
        return f"{self.name}: got {got}, expected {self.expected}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "got": self.got, "expected": self.expected}


@dataclass(frozen=True)
class Finding:
    """A warning that a step's result looks broken (modelzip.findings), and what to try instead.

    Warnings never change the exit code; they are in report.json's ``warnings`` and report.md.
    """

    step: int  # StepRecord.index
    pass_name: str
    kind: str  # "at_chance" | "finetune_no_gain" | "layer_zeroed" | "slower_than_input" | "final_slower"
    message: str
    fix: str

    def format(self) -> str:
        return f"passes[{self.step}].{self.pass_name}: {self.message}; {self.fix}"

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "pass": self.pass_name, "kind": self.kind, "message": self.message,
                "fix": self.fix}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Finding:
        return cls(d["step"], d["pass"], d["kind"], d["message"], d["fix"])


@dataclass(frozen=True)
class Unchecked:
    """Warnings (Finding kinds) that could not be decided for a step: the accuracy they compare
    was not evaluated (``evaluation.steps: final``) and the pass recorded none it could use."""

    step: int  # StepRecord.index
    pass_name: str
    kinds: tuple[str, ...]  # e.g. ("at_chance", "finetune_no_gain")
    reason: str

    def format(self) -> str:
        return f"passes[{self.step}].{self.pass_name}: {', '.join(self.kinds)} not checked: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "pass": self.pass_name, "kinds": list(self.kinds), "reason": self.reason}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Unchecked:
        return cls(d["step"], d["pass"], tuple(d["kinds"]), d["reason"])


@dataclass(frozen=True)
class Report:
    """Everything report.json holds; ``to_json()`` is the file (schema REPORT_SCHEMA)."""

    recipe_name: str
    seed: int
    wall_time_s: float
    baseline: Baseline
    steps: tuple[StepRecord, ...]
    final: Final
    gates: tuple[GateResult, ...]
    environment: dict[str, Any]
    files: dict[str, dict[str, Any]]  # size and sha256 of model.onnx and recipe.resolved.yaml
    warnings: tuple[Finding, ...] = ()  # results that look broken (modelzip.findings)
    unchecked: tuple[Unchecked, ...] = ()  # warnings that could not be decided (modelzip.findings)
    evaluation: dict[str, Any] = field(default_factory=dict)  # the recipe's resolved `evaluation:` section
    deploy: tuple[Any, ...] = ()  # modelzip.deploy.records.DeployRecord, one per `deploy:` target

    @property
    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "status": "gates_failed" if self.failed_gates else "passed",
            "recipe": {"name": self.recipe_name, "resolved": "recipe.resolved.yaml", "seed": self.seed},
            "wall_time_s": round(self.wall_time_s, 3),
            "baseline": self.baseline.to_json(),
            "steps": [s.to_json() for s in self.steps],
            "final": self.final.to_json(),
            "gates": [g.to_json() for g in self.gates],
            "warnings": [w.to_json() for w in self.warnings],
            "unchecked": [u.to_json() for u in self.unchecked],
            "evaluation": self.evaluation,
            "environment": self.environment,
            "files": self.files,
            # Only when the recipe has `deploy:` (docs/report.md): reports without targets are unchanged.
            **({"deploy": [d.to_json() for d in self.deploy]} if self.deploy else {}),
        }
