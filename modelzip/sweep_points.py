"""The points of a sweep, their Pareto fronts, and sweep.json (schema ``modelzip.sweep/1``).

A point is one finished (or failed) run, read back from its report.json. Two fronts are
drawn: accuracy against file size, and accuracy against latency. Latency is each run's
speedup over its own fp32 baseline, measured interleaved within that run, shown as the
relative latency 1/speedup: absolute milliseconds of runs made minutes apart (or on other
machines, for `collect`) would compare machine drift, not models.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelzip.errors import InputError

SWEEP_SCHEMA = "modelzip.sweep/1"
STATUSES = ("passed", "gates_failed", "error")  # a run's report.json status, or: it did not finish
# (name, cost function) of each front: accuracy up, cost down.
FRONTS: dict[str, Callable[[SweepPoint], float | None]] = {
    "size": lambda p: p.size_bytes,
    "latency": lambda p: p.relative_latency,
}


@dataclass(frozen=True)
class SweepPoint:
    name: str  # the run folder's name
    label: str  # the swept values, e.g. "target_macs=0.3"
    overrides: dict[str, Any]
    folder: str
    status: str  # report.json's "passed" | "gates_failed", or "error" (the run did not finish)
    error: str | None = None
    accuracy: float | None = None
    accuracy_delta: float | None = None  # final - input model
    size_bytes: int | None = None
    zip_bytes: int | None = None
    macs: int | None = None
    params_nonzero: int | None = None
    speedup: float | None = None  # baseline / final median at data.batch_size, same run
    pareto: dict[str, bool] = field(default_factory=dict)

    @property
    def relative_latency(self) -> float | None:
        return None if not self.speedup else 1.0 / self.speedup

    @property
    def measured(self) -> bool:
        return self.accuracy is not None

    @classmethod
    def failed(cls, name: str, label: str, overrides: dict[str, Any], folder: str, error: str) -> SweepPoint:
        return cls(name, label, overrides, folder, "error", error=error)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def point_from_run(run, overrides: dict[str, Any], label: str) -> SweepPoint:
    """A point from a run compare.read_run validated (its report.json)."""
    final = run.final
    return SweepPoint(run.folder.name, label, overrides, str(run.folder), run.status,
                      accuracy=final.metrics.accuracy, accuracy_delta=final.ratios.accuracy_delta,
                      size_bytes=final.metrics.size_bytes, zip_bytes=final.metrics.zip_bytes,
                      macs=final.metrics.macs, params_nonzero=final.metrics.params_nonzero,
                      speedup=final.ratios.speedup)


def pareto_front(points: Sequence[SweepPoint], cost: Callable[[SweepPoint], float | None]) -> list[SweepPoint]:
    """The measured points no other point beats: none has accuracy >= and cost <= with one strict.
    Sorted by cost."""
    candidates = [p for p in points if p.measured and cost(p) is not None]

    def beats(q: SweepPoint, p: SweepPoint) -> bool:
        return q.accuracy >= p.accuracy and cost(q) <= cost(p) and (q.accuracy, cost(q)) != (p.accuracy, cost(p))

    front = [p for p in candidates if not any(beats(q, p) for q in candidates)]
    return sorted(front, key=lambda p: (cost(p), -p.accuracy))


def build_sweep(points: Sequence[SweepPoint], *, recipe: str | None, grid: dict[str, list[Any]],
                wall_time_s: float | None = None) -> dict[str, Any]:
    """sweep.json: every point (with its front memberships) and each front as point names."""
    fronts = {name: pareto_front(points, cost) for name, cost in FRONTS.items()}
    marked = [SweepPoint(**{**asdict(p), "pareto": {name: p in front for name, front in fronts.items()}})
              for p in points]
    return {"schema": SWEEP_SCHEMA, "recipe": recipe, "grid": grid, "wall_time_s": wall_time_s,
            "counts": {status: sum(p.status == status for p in points) for status in STATUSES},
            "points": [p.to_json() for p in marked],
            "pareto": {name: [p.name for p in front] for name, front in fronts.items()}}


def points_from_json(sweep: dict[str, Any]) -> list[SweepPoint]:
    return [SweepPoint(**p) for p in sweep["points"]]


# --------------------------------------------------------------------------- collect


def collect(folders: Sequence[Path]) -> dict[str, Any]:
    """The sweep report of runs made elsewhere (a CI matrix, a job array): each folder's
    report.json, labelled by the recipe keys whose values differ between the runs
    (from each folder's recipe.resolved.yaml)."""
    from modelzip.compare import read_run
    from modelzip.run_folder import RESOLVED_RECIPE

    if not folders:
        raise InputError("collect needs at least one run folder", where="RUN", fix="name the run folders")
    runs = [read_run(Path(f), label=str(f)) for f in folders]
    resolved = [_flat(_read_yaml(run.folder / RESOLVED_RECIPE)) for run in runs]
    varying = sorted({k for flat in resolved for k in flat if k not in ("output", "cache_dir")
                      and len({json.dumps(r.get(k), sort_keys=True) for r in resolved}) > 1})
    points = []
    for run, flat in zip(runs, resolved):
        overrides = {k: flat.get(k) for k in varying}
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items()) or run.folder.name
        points.append(point_from_run(run, overrides, label))
    names = [p.name for p in points]
    if len(set(names)) != len(names):  # folders of the same name in different places: use the paths
        points = [SweepPoint(**{**asdict(p), "name": p.folder}) for p in points]
    grid = {k: sorted({json.dumps(p.overrides[k], sort_keys=True) for p in points}) for k in varying}
    return build_sweep(points, recipe=None, grid={k: [json.loads(v) for v in vs] for k, vs in grid.items()})


def _read_yaml(path: Path) -> Any:
    import yaml

    if not path.is_file():
        raise InputError("the run folder has no resolved recipe", where=str(path.parent), got=f"no {path.name}",
                         fix="name folders `modelzip run` wrote")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"passes.0.prune.target_macs": 0.3, ...}: keys as --set and --grid write them."""
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()} or {
            prefix.rstrip("."): {}}
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        return {k: v for i, sub in enumerate(value) for k, v in _flat(sub, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}
