"""`modelzip compare`: finished runs side by side, read from their report.json, with deltas
against one baseline run and the ``--fail-on`` thresholds a CI job checks.

report.json is read back through the typed records (``Final.from_json``) after its fields are
checked here, so a wrong or truncated file is exit 2 naming the key, never a KeyError. No heavy
imports: `compare` runs where torch is not installed.
"""
from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelzip.errors import InputError, RegressionFailure, clip_repr
from modelzip.evaluation.records import REPORT_SCHEMA, Final, LatencyPair, batch_key

COMPARE_SCHEMA = "modelzip.compare/1"
REPORT = "report.json"
FORMATS = ("table", "markdown", "json")


@dataclass(frozen=True)
class Key:
    """One ``--fail-on`` key: what it measures and which side of the limit passes."""

    name: str
    op: str  # "<=" or ">="
    formula: str  # what `got` is, in the failure message
    meaning: str


# Every key compares a run with the baseline run; ratios are "baseline / run", so > 1 is better.
KEYS = {k.name: k for k in (
    Key("accuracy_drop", "<=", "baseline accuracy - run accuracy",
        "baseline final accuracy - run final accuracy (0.002 = 0.2 pp)"),
    Key("size_ratio", ">=", "baseline bytes / run bytes",
        "baseline model bytes / run model bytes (0.95: at most 1/0.95 = 5.3% larger)"),
    Key("zip_ratio", ">=", "baseline zip bytes / run zip bytes", "the same after deflate"),
    Key("speedup_ratio", ">=", "baseline ms / run ms at data.batch_size",
        "baseline median ms / run median ms at data.batch_size "
        "(only where both measured latency at the same batch size)"),
)}


@dataclass(frozen=True)
class Threshold:
    key: Key
    limit: float


def parse_fail_on(items: list[str] | tuple[str, ...]) -> tuple[Threshold, ...]:
    """``["accuracy_drop=0.002,size_ratio=0.95"]`` -> thresholds; InputError (exit 2) on a bad item."""
    found: dict[str, Threshold] = {}
    for item in (part.strip() for text in items for part in text.split(",")):
        if not item:
            continue
        name, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not name:
            raise InputError("a --fail-on item is not KEY=VALUE", where="--fail-on", got=clip_repr(item),
                             expected="KEY=VALUE[,KEY=VALUE...]",
                             fix="e.g. --fail-on accuracy_drop=0.002,size_ratio=0.95")
        if name not in KEYS:
            close = difflib.get_close_matches(name, list(KEYS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InputError(f"unknown --fail-on key {clip_repr(name)}", where="--fail-on", got=clip_repr(item),
                             expected=", ".join(KEYS), fix=f"{hint}`modelzip compare --help` says what each key checks")
        try:
            limit = float(value)
        except ValueError:
            limit = math.nan
        if not math.isfinite(limit):
            raise InputError(f"--fail-on {name} needs a finite number", where="--fail-on", got=clip_repr(item),
                             expected=f"{name}=NUMBER ({KEYS[name].op} NUMBER passes)", fix=f"e.g. {name}=0.95")
        if name in found:
            raise InputError(f"--fail-on {name} is given twice", where="--fail-on", got=clip_repr(item),
                             expected="each key once", fix="keep one limit per key")
        found[name] = Threshold(KEYS[name], limit)
    return tuple(found.values())


@dataclass(frozen=True)
class Run:
    """One run folder: its report.json's status, recipe name, final record and environment."""

    label: str  # the folder as the user wrote it
    folder: Path
    recipe: str
    status: str
    final: Final
    environment: dict[str, Any]

    @property
    def headline(self) -> LatencyPair | None:
        """The latency pair at data.batch_size (the largest batch measured), if measured."""
        return None if self.final.latency is None else self.final.latency.headline


_NUMBER = "number"
_POSITIVE = "positive number"
# The fields of report.json that compare reads (and Final.from_json needs), with their kinds.
_FIELDS: tuple[tuple[str, object], ...] = (
    ("status", str), ("recipe.name", str), ("environment", dict),
    ("final.artifact", str), ("final.id", str), ("final.accuracy", _NUMBER), ("final.accuracy_backend", str),
    ("final.eval_samples", _NUMBER), ("final.params_total", _NUMBER), ("final.params_nonzero", _NUMBER),
    ("final.macs", _NUMBER), ("final.size_bytes", _POSITIVE), ("final.zip_bytes", _POSITIVE),
    ("final.lineage", list), ("final.baseline_size_bytes", _NUMBER), ("final.baseline_zip_bytes", _NUMBER),
    ("final.threads", _NUMBER), ("final.latency", (dict, type(None))),
    ("final.ratios.size", _NUMBER), ("final.ratios.zip_size", _NUMBER), ("final.ratios.accuracy_delta", _NUMBER),
    ("final.ratios.accuracy_delta_vs_onnx", _NUMBER),
)
_PAIR_FIELDS: tuple[tuple[str, object], ...] = (
    ("baseline.median_ms", _POSITIVE), ("final.median_ms", _POSITIVE), ("ratio", _NUMBER), ("ci_low", _NUMBER),
    ("ci_high", _NUMBER), ("pairs", _NUMBER), ("verdict", str),
    *((f"{side}.{k}", _NUMBER) for side in ("baseline", "final") for k in ("batch", "p90_ms", "mean_ms", "runs",
                                                                           "threads")),
)


def read_run(folder: Path, label: str | None = None) -> Run:
    """The run in ``folder`` (its report.json); InputError (exit 2) naming the file and key otherwise."""
    path = Path(folder) / REPORT
    fix = "name a folder `modelzip run` wrote (it holds model.onnx, report.json, report.md), or rerun the recipe"
    if not path.is_file():
        raise InputError(f"no {REPORT} in the run folder", where=str(folder),
                         got="a missing folder" if not Path(folder).is_dir() else "a folder without report.json",
                         expected=f"a run folder with {REPORT}", fix=fix)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{REPORT} cannot be read as JSON", where=str(path), got=clip_repr(str(exc)),
                         expected=f"the JSON report of schema {REPORT_SCHEMA}", fix=fix) from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != REPORT_SCHEMA:
        raise InputError(f"{REPORT} is not of the schema compare reads", where=f"{path}: schema",
                         got=clip_repr(schema if isinstance(data, dict) else type(data).__name__),
                         expected=repr(REPORT_SCHEMA), fix=f"{fix} with this modelzip version")
    problem = _check_fields(data)
    if problem is not None:
        key, got, expected = problem
        raise InputError(f"{REPORT} does not follow schema {REPORT_SCHEMA}", where=f"{path}: {key}", got=got,
                         expected=expected, fix=f"{fix}; docs/report.md documents the schema")
    return Run(label or str(folder), Path(folder), data["recipe"]["name"], data["status"],
               Final.from_json(data["final"]), data["environment"])


def _check_fields(data: dict[str, Any]) -> tuple[str, str, str] | None:
    """The first field that is missing or of the wrong kind: (key path, got, expected); else None."""
    checks = list(_FIELDS)
    latency = data.get("final", {}).get("latency") if isinstance(data.get("final"), dict) else None
    if isinstance(latency, dict):
        for key in latency:
            if key != "cached":
                if not (key.startswith("batch_") and key.removeprefix("batch_").isdigit()):
                    return f"final.latency.{key}", clip_repr(key), "batch_<n> keys and cached"
                checks += [(f"final.latency.{key}.{field}", kind) for field, kind in _PAIR_FIELDS]
    for dotted, kind in checks:
        value: Any = data
        for i, part in enumerate(parts := dotted.split(".")):
            if not isinstance(value, dict) or part not in value:
                return ".".join(parts[:i + 1]), "no such key", _kind_name(kind)
            value = value[part]
        if not _is_kind(value, kind):
            return dotted, clip_repr(value), _kind_name(kind)
    return None


def _is_kind(value: object, kind: object) -> bool:
    if kind in (_NUMBER, _POSITIVE):
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return number and (kind == _NUMBER or value > 0)
    return isinstance(value, kind)  # type: ignore[arg-type]


def _kind_name(kind: object) -> str:
    if isinstance(kind, str):
        return f"a finite {kind}"
    names = {str: "a string", dict: "an object", list: "a list"}
    return names.get(kind, "an object or null")  # type: ignore[call-overload]


@dataclass(frozen=True)
class Versus:
    """A run against the baseline run (ratios are baseline / run: > 1 is smaller or faster)."""

    accuracy_drop: float  # baseline accuracy - run accuracy
    size_ratio: float
    zip_ratio: float
    speedup_ratio: float | None  # None: one of them has no latency at the same data.batch_size
    batch: int | None

    @classmethod
    def of(cls, run: Run, baseline: Run) -> Versus:
        mine, theirs = run.final.metrics, baseline.final.metrics
        pair, ref = run.headline, baseline.headline
        same = pair is not None and ref is not None and pair.batch == ref.batch
        return cls(theirs.accuracy - mine.accuracy, theirs.size_bytes / mine.size_bytes,
                   theirs.zip_bytes / mine.zip_bytes,
                   ref.final.median_ms / pair.final.median_ms if same else None, pair.batch if same else None)

    def value(self, key: str) -> float | None:
        return getattr(self, key)

    def to_json(self) -> dict[str, Any]:
        return {"accuracy_drop": self.accuracy_drop, "size_ratio": self.size_ratio, "zip_ratio": self.zip_ratio,
                "speedup_ratio": self.speedup_ratio, "batch": self.batch}


@dataclass(frozen=True)
class Check:
    """One --fail-on threshold on one run; ``passed`` None: not comparable (no latency)."""

    run: str
    key: Key
    got: float | None
    limit: float
    baseline: str

    @property
    def passed(self) -> bool | None:
        if self.got is None:
            return None
        slack = 1e-12  # as gates: a drop of exactly the limit passes despite float rounding
        return self.got <= self.limit + slack if self.key.op == "<=" else self.got >= self.limit - slack

    def format(self) -> str:
        got = "n/a" if self.got is None else f"{self.got:.4g}"
        return (f"{self.run}: {self.key.name} got {got}, limit {self.key.op} {self.limit:g} "
                f"({self.key.formula}; baseline {self.baseline})")

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "key": self.key.name, "got": self.got, "op": self.key.op, "limit": self.limit,
                "passed": self.passed}


@dataclass(frozen=True)
class Comparison:
    runs: tuple[Run, ...]  # as listed; a --baseline that is not listed comes first
    baseline: Run
    versus: tuple[Versus | None, ...]  # per run; None for the baseline itself
    checks: tuple[Check, ...]
    notes: tuple[str, ...]

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]

    def raise_on_failures(self) -> None:
        if self.failures:
            raise RegressionFailure(self.failures)

    def to_json(self) -> dict[str, Any]:
        return {"schema": COMPARE_SCHEMA, "baseline": self.baseline.label,
                "runs": [_run_json(r, v) for r, v in zip(self.runs, self.versus)],
                "checks": [c.to_json() for c in self.checks], "notes": list(self.notes)}


def compare(folders: list[Path], *, baseline: Path | None = None,
            thresholds: tuple[Threshold, ...] = ()) -> Comparison:
    """Read every folder's report.json and compare each run with the baseline run (default: the first)."""
    runs = [read_run(f) for f in folders]
    base = runs[0]
    if baseline is not None:
        listed = [r for r in runs if r.folder.resolve() == Path(baseline).resolve()]
        base = listed[0] if listed else read_run(baseline)
        if not listed:
            runs.insert(0, base)
    versus = tuple(None if r is base else Versus.of(r, base) for r in runs)
    checks = tuple(Check(r.label, t.key, v.value(t.key.name), t.limit, base.label)
                   for r, v in zip(runs, versus) if v is not None for t in thresholds)
    return Comparison(tuple(runs), base, versus, checks, tuple(_notes(runs, base, checks)))


def _notes(runs: list[Run], base: Run, checks: tuple[Check, ...]) -> list[str]:
    """What makes a delta less meaningful than it looks."""
    notes = []
    for run in runs:
        if run is base:
            continue
        if run.final.metrics.eval_samples != base.final.metrics.eval_samples:
            notes.append(f"{run.label}: accuracy on {run.final.metrics.eval_samples} eval samples, the baseline "
                         f"on {base.final.metrics.eval_samples}: the accuracy delta mixes two eval sets")
        if run.headline is not None and base.headline is not None:
            if run.headline.batch != base.headline.batch:
                notes.append(f"{run.label}: latency at batch {run.headline.batch}, the baseline at batch "
                             f"{base.headline.batch}: no speed ratio")
            cpus = run.environment.get("cpu_model"), base.environment.get("cpu_model")
            if cpus[0] != cpus[1] or run.final.threads != base.final.threads:
                notes.append(f"{run.label}: latency measured on {cpus[0]} with {run.final.threads} threads, the "
                             f"baseline on {cpus[1]} with {base.final.threads}: the speed ratio compares machines "
                             "too")
    skipped = sorted({c.run for c in checks if c.passed is None})
    if skipped:
        notes.append(f"--fail-on speedup_ratio not checked for {', '.join(skipped)}: "
                     "latency missing or at another batch size")
    return notes


HEADER = ["run", "recipe", "status", "accuracy (Δ input)", "size (x smaller, zip)", "MACs",
          "batch 1 ms (speedup)", "data.batch_size ms (speedup, verdict)", "vs baseline (Δ acc, size, speed)"]
LEGEND = ("Δ, smaller, zip and speedup compare each run with its own input model (its fp32 ONNX, measured "
          "in the same run). 'vs baseline' compares with the baseline run: accuracy run - baseline; "
          "size = baseline bytes / run bytes; speed = baseline ms / run ms at data.batch_size "
          "(> 1: the run is smaller or faster).")


def rows(comparison: Comparison) -> list[list[str]]:
    """The table's cells, one row per run (HEADER's columns)."""
    out = []
    for run, versus in zip(comparison.runs, comparison.versus):
        m, ratios = run.final.metrics, run.final.ratios
        accuracy = f"{100 * m.accuracy:.2f}% ({100 * ratios.accuracy_delta:+.2f} pp)"
        out.append([run.label, run.recipe, run.status, accuracy,
                    f"{m.size_bytes / 1e6:.3f} MB ({ratios.size:.2f}x, zip {ratios.zip_size:.2f}x)",
                    _count(m.macs), _latency(run, 1), _latency(run, None), _versus(versus)])
    return out


def _count(n: int) -> str:
    return f"{n / 1e6:.3f} M" if n >= 1e5 else f"{n:,}"


def _latency(run: Run, batch: int | None) -> str:
    latency = run.final.latency
    pair = None if latency is None else (latency.headline if batch is None else latency.at(batch))
    if pair is None:
        return "n/a"
    text = f"{pair.final.median_ms:.3f} ms ({pair.ratio:.2f}x"
    return f"b{pair.batch} {text} {pair.verdict})" if batch is None else f"{text})"


def _versus(versus: Versus | None) -> str:
    if versus is None:
        return "(baseline)"
    speed = "n/a" if versus.speedup_ratio is None else f"{versus.speedup_ratio:.2f}x"
    return f"{100 * (0.0 - versus.accuracy_drop):+.2f} pp, {versus.size_ratio:.2f}x, {speed}"


def render_markdown(comparison: Comparison) -> str:
    """For a pull request comment; cells are escaped so a `|` in a folder name keeps the table."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    parts = [f"## modelzip compare (baseline: `{comparison.baseline.label}`)",
             "\n".join([line(HEADER), "|" + "---|" * len(HEADER), *(line(r) for r in rows(comparison))]), LEGEND]
    if comparison.notes:
        parts.append("\n".join(f"- {n}" for n in comparison.notes))
    if comparison.checks:
        marks = {True: "✅", False: "❌", None: "➖"}
        parts.append("**--fail-on**\n\n" + "\n".join(f"- {marks[c.passed]} {c.format()}" for c in comparison.checks))
    return "\n\n".join(parts) + "\n"


def summary_line(comparison: Comparison) -> str | None:
    """One line on the --fail-on checks for the terminal (None without thresholds)."""
    if not comparison.checks:
        return None
    passed = sum(c.passed is True for c in comparison.checks)
    skipped = sum(c.passed is None for c in comparison.checks)
    failed = len(comparison.failures)
    return (f"--fail-on: {passed} passed, {failed} failed" + (f", {skipped} not checked" if skipped else "")
            + f" against baseline {comparison.baseline.label}")


def _run_json(run: Run, versus: Versus | None) -> dict[str, Any]:
    m, ratios = run.final.metrics, run.final.ratios
    latency = None if run.final.latency is None else {
        batch_key(p.batch): {"median_ms": p.final.median_ms, "speedup": p.ratio, "verdict": p.verdict}
        for p in run.final.latency.pairs}
    return {"run": run.label, "recipe": run.recipe, "status": run.status, "baseline": versus is None,
            "accuracy": m.accuracy, "accuracy_delta": ratios.accuracy_delta, "size_bytes": m.size_bytes,
            "zip_bytes": m.zip_bytes, "size_ratio": ratios.size, "zip_ratio": ratios.zip_size, "macs": m.macs,
            "latency": latency, "speedup": ratios.speedup,
            "vs_baseline": None if versus is None else versus.to_json()}
