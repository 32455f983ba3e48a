"""`modelzip sweep` and `modelzip collect`: one recipe over a grid of overrides, and the
trade-off the runs draw (sweep.json, sweep.html with the Pareto fronts).

A sweep runs its points one after another in this process, all sharing one step cache, so a
prefix the points have in common (the baseline export and measurements, a finetune before the
swept quantize) runs once. Every point is validated before the first one runs: a grid key the
schema does not know, or a value it refuses, is exit 2 naming the key. A point that fails is
recorded as failed and the others still run. `--emit-matrix` prints the points as a CI matrix
instead, and `collect` builds the same report from run folders made elsewhere.
"""
from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelzip.errors import InputError, ModelzipError, RecipeError, RecipeProblem
from modelzip.sweep_points import SweepPoint, build_sweep, point_from_run

GRID_HELP = "KEY=V1,V2,... a recipe key (as in --set) and its values; repeat for a cartesian product"


@dataclass(frozen=True)
class Axis:
    """One ``--grid``: a recipe key and the values (YAML text, as ``--set`` reads it) it takes."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Point:
    """One combination of axis values, and the folder its run writes."""

    index: int
    overrides: tuple[tuple[str, str], ...]  # (key, value text) in axis order
    folder: Path

    @property
    def sets(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.overrides]

    @property
    def label(self) -> str:
        return ", ".join(f"{_short(key)}={value}" for key, value in self.overrides)


@dataclass
class Plan:
    recipe_path: Path
    axes: tuple[Axis, ...]
    points: list[Point]
    recipes: list[Any]  # the validated Recipe of each point
    out: Path
    cache_dir: Path
    extra_sets: tuple[str, ...] = ()


# --------------------------------------------------------------------------- the grid


def parse_grid(items: list[str] | tuple[str, ...]) -> tuple[Axis, ...]:
    """``["passes.0.prune.target_macs=0.3,0.5"]`` -> axes; InputError (exit 2) on a malformed item."""
    axes: dict[str, Axis] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError("a --grid item is not KEY=V1,V2,...", where="--grid", got=item,
                             expected="e.g. passes.0.prune.target_macs=0.3,0.5,0.8", fix=GRID_HELP)
        values = tuple(v.strip() for v in split_values(text))
        if not values or any(v == "" for v in values):
            raise InputError("a --grid value is empty", where=f"--grid {key}", got=text,
                             expected="comma-separated values, e.g. 0.3,0.5", fix="remove the stray comma")
        if key in axes:
            raise InputError("the same key is swept twice", where=f"--grid {key}",
                             got=f"{axes[key].values} and {values}", fix="give each key one --grid")
        if len(set(values)) != len(values):
            raise InputError("a --grid value is repeated", where=f"--grid {key}", got=text,
                             fix="list each value once")
        axes[key] = Axis(key, values)
    if not axes:
        raise InputError("a sweep needs at least one --grid", where="--grid", fix=GRID_HELP)
    return tuple(axes.values())


def split_values(text: str) -> list[str]:
    """Split on commas outside brackets and quotes: ``0.1,[1, 2],'a,b'`` -> 3 values."""
    values, depth, quote, current = [], 0, None, []
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            values.append("".join(current))
            current = []
            continue
        current.append(char)
    values.append("".join(current))
    return values


def _short(key: str) -> str:
    """The last segment of a key, for labels: passes.0.prune.target_macs -> target_macs."""
    return key.rsplit(".", 1)[-1]


def folder_name(index: int, overrides: tuple[tuple[str, str], ...]) -> str:
    text = "-".join(f"{_short(k)}={v}" for k, v in overrides)
    return f"{index:02d}-" + re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text)[:80]


# --------------------------------------------------------------------------- planning


def plan_sweep(recipe_path: Path, axes: tuple[Axis, ...], *, sets: tuple[str, ...] = (), out: Path | None = None,
               registry=None) -> Plan:
    """Every point of the grid, each validated as a recipe before anything runs.

    All problems of all points are gathered into one RecipeError (exit 2), each naming the
    swept key and value it came from.
    """
    from modelzip.recipe import load_recipe

    base = load_recipe(recipe_path, list(sets), registry=registry)  # the recipe itself must be valid
    out = Path(out) if out is not None else base.output_dir.with_name(base.output_dir.name + "-sweep")
    cache_dir = base.resolve(base.cache_dir) or out / ".cache"
    points, recipes, problems = [], [], {}
    for index, combination in enumerate(itertools.product(*(axis.values for axis in axes))):
        overrides = tuple(zip((axis.key for axis in axes), combination))
        point = Point(index, overrides, out / folder_name(index, overrides))
        placed = [f"output={point.folder.resolve()}", f"cache_dir={Path(cache_dir).resolve()}"]
        try:
            recipes.append(load_recipe(recipe_path, [*sets, *point.sets, *placed], registry=registry))
        except RecipeError as exc:
            for problem in exc.problems:
                blamed = _grid_problem(problem, overrides)
                problems.setdefault((blamed.path, blamed.message), blamed)
        points.append(point)
    if problems:
        raise RecipeError(list(problems.values()), file=str(recipe_path))
    return Plan(Path(recipe_path), axes, points, recipes, out, Path(cache_dir), tuple(sets))


def _grid_problem(problem: RecipeProblem, overrides: tuple[tuple[str, str], ...]) -> RecipeProblem:
    """The problem, said to come from --grid (with the value) when it is at a swept key."""
    dotted = re.sub(r"\[(\d+)\]", r".\1", problem.path)
    for key, value in overrides:
        if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
            return RecipeProblem(key, None, f"{problem.message} (value {value!r})", problem.suggestion,
                                 source="--grid")
    return problem


def emit_matrix(plan: Plan, recipe_arg: str) -> dict[str, Any]:
    """The points as a CI matrix (GitHub Actions `include`, or one array index per line of a
    cluster job): each with its overrides, output folder and the `modelzip run` command."""
    include = []
    for point in plan.points:
        args = [arg for item in (*plan.extra_sets, *point.sets) for arg in ("--set", item)]
        command = ["modelzip", "run", recipe_arg, *args, "--out", str(point.folder)]
        include.append({"name": point.folder.name, "label": point.label, "set": [*plan.extra_sets, *point.sets],
                        "out": str(point.folder), "command": " ".join(_quote(a) for a in command)})
    return {"include": include,
            "collect": " ".join(["modelzip", "collect", *(_quote(str(p.folder)) for p in plan.points),
                                 "--out", _quote(str(plan.out))])}


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


# --------------------------------------------------------------------------- running


@dataclass
class SweepRun:
    points: list[SweepPoint] = field(default_factory=list)
    wall_time_s: float = 0.0

    @property
    def failed(self) -> list[SweepPoint]:
        return [p for p in self.points if p.status == "error"]


def run_sweep(plan: Plan, run: Callable[[Any, Path], Any], *, on_point: Callable[[Point, str], None] | None = None
              ) -> SweepRun:
    """Run every point with ``run(recipe, folder)`` (a run_recipe call); a failed point is
    recorded with its error and the next one runs. Ctrl-C stops the sweep (finished steps stay
    cached, so running it again resumes)."""
    started = time.perf_counter()
    result = SweepRun()
    for point, recipe in zip(plan.points, plan.recipes):
        if on_point is not None:
            on_point(point, "running")
        swept = run_point(lambda recipe=recipe: recipe, run, point.folder, dict(point.overrides), point.label)
        result.points.append(swept)
        if on_point is not None:
            on_point(point, swept.status)
    result.wall_time_s = time.perf_counter() - started
    return result


def run_point(recipe: Callable[[], Any], run: Callable[[Any, Path], Any], folder: Path, overrides: dict[str, Any],
              label: str) -> SweepPoint:
    """One point: ``run(recipe(), folder)``, read back from its report.json; a point that fails
    (loading its recipe included) is recorded with its error instead of stopping the others."""
    from modelzip.compare import read_run

    try:
        run(recipe(), folder)
        return point_from_run(read_run(folder, label=folder.name), overrides, label)
    except ModelzipError as exc:
        return SweepPoint.failed(folder.name, label, overrides, str(folder), exc.format())
    except Exception as exc:  # a bug in a pass or plugin must not lose the other points
        return SweepPoint.failed(folder.name, label, overrides, str(folder),
                                 f"internal error: {type(exc).__name__}: {exc}")


def sweep_report(plan: Plan, run: SweepRun) -> dict[str, Any]:
    return build_sweep(run.points, recipe=str(plan.recipe_path), grid={a.key: list(a.values) for a in plan.axes},
                       wall_time_s=run.wall_time_s)
