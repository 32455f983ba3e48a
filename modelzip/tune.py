"""`modelzip tune`: the most compressed recipe within an accuracy budget.

The knobs are the compression strength of the recipe's passes (prune `sparsity` or
`target_macs`, a gradual finetune's `prune.sparsity`, lowrank `rank_ratio` or `energy`,
weight-only `bits`), or the keys named with ``--over``. Each knob's values are laid out from
the safest to the boldest, and a bisection finds the boldest value whose run stays within the
budget (accuracy assumed to fall as compression grows), one knob after the other, each given
the values already chosen for the knobs before it.

Search runs are a cheap proxy of the real one: latency is measured only when the objective
is latency. The winner is then run in full (latency too); its steps come from the shared step
cache, so that costs a measurement, not a training run. Every point tried is in the sweep
report (sweep.json, sweep.html), and the winning recipe is written as tuned.yaml.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelzip.errors import InputError
from modelzip.sweep_points import SweepPoint

Objective = Literal["size", "latency"]
OVER_HELP = "KEY=LOW..HIGH: a knob and its range (e.g. passes.0.prune.sparsity=0.5..0.95); repeatable"


@dataclass(frozen=True)
class KnobKind:
    """A parameter tune knows: which way is more compression, its default range, its step."""

    stronger: Literal["up", "down"]
    low: float
    high: float
    step: float | None  # None: the values are listed (bits)
    values: tuple[Any, ...] = ()


# (pass, parameter) -> kind. Ranges stop short of the degenerate ends (all weights gone).
KINDS: dict[tuple[str, str], KnobKind] = {
    ("prune", "sparsity"): KnobKind("up", 0.05, 0.98, 0.01),
    ("prune", "target_macs"): KnobKind("down", 0.10, 0.95, 0.01),
    ("finetune", "prune.sparsity"): KnobKind("up", 0.05, 0.98, 0.01),
    ("lowrank", "rank_ratio"): KnobKind("down", 0.05, 0.95, 0.01),
    ("lowrank", "energy"): KnobKind("down", 0.80, 0.999, 0.001),
    ("quantize", "bits"): KnobKind("down", 4, 8, None, (8, 4)),
}


@dataclass(frozen=True)
class Knob:
    key: str  # e.g. passes.0.prune.sparsity
    values: tuple[Any, ...]  # safest first, boldest last
    current: Any = None  # the recipe's value: what the knob is while the knobs before it are tuned

    def describe(self) -> str:
        return f"{self.key}: {self.values[0]} .. {self.values[-1]} ({len(self.values)} values)"


@dataclass
class Trial:
    point: SweepPoint
    within: bool


@dataclass
class TuneResult:
    knobs: list[Knob]
    chosen: dict[str, Any] = field(default_factory=dict)  # key -> value of the winner
    trials: list[Trial] = field(default_factory=list)
    final: SweepPoint | None = None


# --------------------------------------------------------------------------- the knobs


def knobs_of(recipe, over: list[str] | tuple[str, ...], *, objective: Objective) -> list[Knob]:
    """The knobs ``--over`` names, else the compression strength of each pass in the recipe.
    For the latency objective, magnitude sparsity is left out: sparse weights in a dense file
    make it smaller when zipped, not faster."""
    found = _recipe_knobs(recipe, objective)
    if over:
        return [_over_knob(item, found, recipe) for item in over]
    if not found:
        raise InputError("the recipe has no compression strength to tune", where="passes",
                         got=", ".join(step.name for step in recipe.passes) or "no passes",
                         expected="prune (sparsity or target_macs), finetune.prune.sparsity, lowrank "
                                  "(rank_ratio or energy) or quantize weight_only bits",
                         fix="add such a pass, or name a knob with --over " + OVER_HELP)
    return [Knob(key, _values(kind, kind.low, kind.high), _current(recipe, key)) for key, kind in found.items()]


def _recipe_knobs(recipe, objective: Objective) -> dict[str, KnobKind]:
    found = {}
    for index, step in enumerate(recipe.passes):
        params = step.params()
        for (pass_name, param), kind in KINDS.items():
            if pass_name != step.name:
                continue
            value = _dig(params, param)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue  # not set, "auto", or a per-layer mapping: not one number to tune
            if objective == "latency" and param.endswith("sparsity"):
                continue
            if param == "bits" and params.get("mode") != "weight_only":
                continue
            found[f"passes.{index}.{step.name}.{param}"] = kind
    return found


def _dig(params: dict[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _over_knob(item: str, found: dict[str, KnobKind], recipe) -> Knob:
    key, sep, text = item.partition("=")
    low, dots, high = text.partition("..")
    kind = found.get(key) or _kind_of_key(key, recipe)
    if not sep or not dots:
        raise InputError("an --over item is not KEY=LOW..HIGH", where="--over", got=item, fix=OVER_HELP)
    if kind is None:
        known = ", ".join(f"{p}.{q}" for p, q in KINDS)
        raise InputError("--over names a key tune does not know how to tune", where=f"--over {key}",
                         got=key, expected=f"passes.<i>.<pass>.<param> for one of: {known}",
                         fix="name the key of a pass in this recipe, e.g. passes.0.prune.sparsity")
    try:
        lo, hi = sorted((float(low), float(high)))
    except ValueError:
        raise InputError("an --over range is not two numbers", where=f"--over {key}", got=text,
                         expected="LOW..HIGH, e.g. 0.5..0.95", fix=OVER_HELP) from None
    return Knob(key, _values(kind, lo, hi), _current(recipe, key))


def _current(recipe, key: str) -> Any:
    """The value ``passes.<i>.<pass>.<param>`` has in the recipe (None if unset)."""
    _, index, _, param = key.split(".", 3)
    return _dig(recipe.passes[int(index)].params(), param)


def _kind_of_key(key: str, recipe) -> KnobKind | None:
    parts = key.split(".")
    if len(parts) < 4 or parts[0] != "passes" or not parts[1].isdigit():
        return None
    index = int(parts[1])
    if index >= len(recipe.passes) or recipe.passes[index].name != parts[2]:
        return None
    return KINDS.get((parts[2], ".".join(parts[3:])))


def _values(kind: KnobKind, low: float, high: float) -> tuple[Any, ...]:
    if kind.step is None:
        listed = tuple(v for v in kind.values if low <= v <= high)
        return listed if kind.stronger == "down" else tuple(reversed(listed))
    count = int(math.floor((high - low) / kind.step + 1e-9)) + 1
    decimals = max(0, -int(math.floor(math.log10(kind.step))))
    grid = [round(low + i * kind.step, decimals) for i in range(count)]
    return tuple(grid if kind.stronger == "up" else reversed(grid))


# --------------------------------------------------------------------------- the search


def boldest_within(count: int, within: Callable[[int], bool]) -> int | None:
    """The largest index in range(count) for which ``within`` holds, assuming it holds up to
    some index and fails after it (None when it fails everywhere): about log2(count) calls."""
    lo, hi = -1, count  # within(lo) held (or lo = -1), within(hi) failed (or hi = count)
    while hi - lo > 1:
        mid = (lo + hi + 1) // 2
        if within(mid):
            lo = mid
        else:
            hi = mid
    return None if lo < 0 else lo


def search(knobs: list[Knob], evaluate: Callable[[dict[str, Any]], Trial]) -> TuneResult:
    """Bisection per knob, in order; ``evaluate(overrides)`` runs one point (memoized here)."""
    result = TuneResult(knobs)
    # Every trial names every knob, so one configuration is one run however it was reached.
    result.chosen = {k.key: k.current for k in knobs if k.current is not None}
    seen: dict[tuple, Trial] = {}

    def trial(overrides: dict[str, Any]) -> Trial:
        token = tuple(sorted((k, repr(v)) for k, v in overrides.items()))
        if token not in seen:
            seen[token] = evaluate(overrides)
            result.trials.append(seen[token])
        return seen[token]

    for knob in knobs:
        index = boldest_within(len(knob.values),
                               lambda i, knob=knob: trial({**result.chosen, knob.key: knob.values[i]}).within)
        if index is None:  # even the safest value is over budget: keep the safest, say so
            result.chosen[knob.key] = knob.values[0]
        else:
            result.chosen[knob.key] = knob.values[index]
    return result


def best_within(trials: list[Trial], objective: Objective) -> Trial | None:
    """The most compressed trial within the budget: smallest zipped file (size), or the
    highest speedup over the fp32 baseline (latency)."""
    ok = [t for t in trials if t.within and t.point.measured]
    if objective == "latency":
        ok = [t for t in ok if t.point.speedup is not None]
        return max(ok, key=lambda t: (t.point.speedup, -(t.point.zip_bytes or 0)), default=None)
    return min(ok, key=lambda t: (t.point.zip_bytes or t.point.size_bytes or 0, t.point.size_bytes or 0),
               default=None)


def within_budget(point: SweepPoint, max_drop: float) -> bool:
    return point.measured and point.accuracy_delta is not None and -point.accuracy_delta <= max_drop + 1e-12


def write_tuned(path: Path, recipe, overrides: dict[str, Any], *, objective: str, max_drop: float) -> None:
    """The winning recipe (``recipe``: the original with the tuned values set), defaults filled
    in and its file paths made absolute, so that it runs from where it is written."""
    import yaml

    from modelzip.atomic import write_text

    data = _absolute_paths(recipe.to_data(), recipe)
    header = (f"# Written by `modelzip tune --objective {objective} --max-accuracy-drop {max_drop}`:\n"
              + "".join(f"#   {key} = {value}\n" for key, value in overrides.items())
              + "# File paths are absolute (the recipe they came from was elsewhere).\n")
    write_text(path, header + yaml.safe_dump(data, sort_keys=False))


def _absolute_paths(data: dict[str, Any], recipe) -> dict[str, Any]:
    """output, cache_dir, model.checkpoint, data.root and distillation teachers, resolved."""
    def absolute(value):
        # resolve() is relative to the recipe's folder, which is relative when the recipe was named so.
        return value if value in (None, "baseline") else os.path.abspath(recipe.resolve(value))

    for section, key in ((data, "output"), (data, "cache_dir"), (data["model"], "checkpoint"), (data["data"], "root")):
        section[key] = absolute(section.get(key))
    data["output"] = os.path.abspath(recipe.output_dir.with_name(recipe.output_dir.name + "-tuned"))
    for step in data["passes"]:
        for params in step.values():
            distill = params.get("distill") if isinstance(params, dict) else None
            if isinstance(distill, dict) and "teacher" in distill:
                distill["teacher"] = absolute(distill["teacher"])
    return data


# --------------------------------------------------------------------------- running


@dataclass
class TunePlan:
    recipe_path: Path
    recipe: Any  # the validated recipe (with --set applied)
    knobs: list[Knob]
    objective: Objective
    max_drop: float
    out: Path
    sets: tuple[str, ...] = ()


def proxy_sets(objective: Objective) -> list[str]:
    """The search runs' overrides: no deploy targets (each converts and times a model: the final
    run deploys the winner); no latency (the expensive measurement) unless latency is what is tuned,
    and so no speed gate either (it could never pass; the final run keeps it)."""
    return ["deploy=[]"] + ([] if objective == "latency" else ["evaluation.latency=false", "gates.min_speedup=null"])


def plan_tune(recipe_path: Path, *, objective: Objective, max_drop: float, over=(), sets=(), out: Path | None = None,
              registry=None) -> TunePlan:
    """The knobs, each checked at both ends of its range as a full recipe (exit 2 naming the
    key) before anything runs."""
    from modelzip.recipe import load_recipe
    from modelzip.sweep import Axis, plan_sweep

    recipe = load_recipe(recipe_path, list(sets), registry=registry)
    knobs = knobs_of(recipe, list(over), objective=objective)
    out = Path(out) if out is not None else recipe.output_dir.with_name(recipe.output_dir.name + "-tune")
    ends = tuple(Axis(k.key, tuple(dict.fromkeys(str(v) for v in (k.values[0], k.values[-1])))) for k in knobs)
    for extra in ((), tuple(proxy_sets(objective))):  # the search runs and the final run: both must be valid
        plan_sweep(recipe_path, ends, sets=(*sets, *extra), out=out, registry=registry)  # raises on a bad key/value
    return TunePlan(Path(recipe_path), recipe, knobs, objective, max_drop, out, tuple(sets))


def run_tune(plan: TunePlan, run: Callable[[Any, Path], Any], *, on_trial: Callable[[str, str], None] | None = None,
             registry=None) -> tuple[TuneResult, dict[str, Any]]:
    """Search, then run the winner in full. Returns the result and the sweep report of every
    point tried (with a ``tune`` section)."""
    from modelzip.recipe import load_recipe
    from modelzip.sweep import folder_name, run_point
    from modelzip.sweep_points import build_sweep

    cache = plan.recipe.resolve(plan.recipe.cache_dir) or plan.out / ".cache"
    proxy = proxy_sets(plan.objective)
    counter = iter(range(10_000))

    def execute(overrides: dict[str, Any], extra: list[str], folder: Path) -> SweepPoint:
        sets = [*plan.sets, *(f"{k}={v}" for k, v in overrides.items()), *extra,
                f"output={folder.resolve()}", f"cache_dir={Path(cache).resolve()}"]
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items())
        if on_trial is not None:
            on_trial(label, "running")
        # A failed point is recorded; the bisection takes it as over budget.
        point = run_point(lambda: load_recipe(plan.recipe_path, sets, registry=registry), run, folder, overrides,
                          label)
        if on_trial is not None:
            on_trial(label, f"{point.status}, {_drop(point)}")
        return point

    def evaluate(overrides: dict[str, Any]) -> Trial:
        folder = plan.out / folder_name(next(counter), tuple((k, str(v)) for k, v in overrides.items()))
        point = execute(overrides, proxy, folder)
        return Trial(point, within_budget(point, plan.max_drop))

    result = search(plan.knobs, evaluate)
    best = best_within(result.trials, plan.objective)
    if best is not None:
        result.chosen = dict(best.point.overrides)
        result.final = execute(result.chosen, [], plan.out / "final")
    points = [t.point for t in result.trials] + ([result.final] if result.final is not None else [])
    report = build_sweep(points, recipe=str(plan.recipe_path), grid={k.key: [k.values[0], k.values[-1]]
                                                                     for k in plan.knobs})
    report["tune"] = {"objective": plan.objective, "max_accuracy_drop": plan.max_drop,
                      "knobs": [{"key": k.key, "values": [k.values[0], k.values[-1]], "count": len(k.values)}
                                for k in plan.knobs],
                      "proxy": proxy, "chosen": result.chosen if best is not None else None,
                      "final": None if result.final is None else result.final.name,
                      "within_budget": result.final is not None and within_budget(result.final, plan.max_drop)}
    return result, report


def _drop(point: SweepPoint) -> str:
    if point.error:
        return point.error.splitlines()[-1].strip() if len(point.error.splitlines()) > 1 else point.error
    if point.accuracy_delta is None:
        return "not measured"
    return f"accuracy {-100 * point.accuracy_delta:+.2f} pp drop"
