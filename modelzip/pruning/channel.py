"""Structured pruning: remove whole channels with Torch-Pruning's dependency graph.

Convolutions, BatchNorms and Linear layers become narrower in place, so MACs,
parameters, file size and (usually) latency fall. The dependency graph keeps
coupled layers consistent across residual additions, concatenations, BatchNorm,
grouped/depthwise convolutions and the flatten -> linear boundary.

A result is returned only after three checks, because a graph that
Torch-Pruning misreads (a channel shuffle, a slice, a hard-coded reshape) can
give a model that runs but computes something else:

1. every module whose shape changes is one modelzip can save and rebuild
   (``modelzip.structure``), checked before pruning;
2. the pruned model runs on the example input and keeps its output shape;
3. it computes exactly what the original computes once the removed channels'
   contributions are cut (their consumers' input weights zeroed): module by
   module on the kept channels, so a mismatch names the first wrong layer.
"""
from __future__ import annotations

import copy
import itertools
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelzip import tasks
from modelzip.pruning import (
    PruneFailure,
    before_after,
    millions,
    model_stats,
    percent,
    prunable_layers,
    resolve_patterns,
)
from modelzip.pruning.verify import (
    TracedError,
    feeding_layers,
    first_divergence,
    masked_original,
    output_layers,
    run_traced,
)

# Modules whose changed shape modelzip.structure can rebuild on reload (exact types).
REBUILDABLE = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
# Highest per-layer ratio target_macs searches: beyond it small layers would be
# emptied, which Torch-Pruning refuses by leaving them whole (MACs rise again).
MAX_SEARCH_RATIO = 0.9
SEARCH_PROBES = 12
CLOSE_ENOUGH = 0.01  # stop searching once within 1% (relative) below the MACs target


@dataclass(frozen=True)
class ChannelSettings:
    """What ``prune_channels`` does (the prune pass maps ``method: channel`` onto it)."""

    ratio: float | None = None  # fraction of each layer's channels removed; or:
    target_macs: float | None = None  # fraction of the input's MACs to keep (ratio searched)
    ignore: tuple[str, ...] = ()  # globs on module names kept whole
    importance: str = "l1"  # l1 | l2 | taylor | random
    allocation: str = "uniform"  # uniform | global
    round_to: int | None = None  # channel counts kept multiples of this
    steps: int = 1  # pruning steps, re-ranking after each
    taylor_batches: int = 4  # training batches for taylor's gradients


@dataclass
class Attempt:
    """One pruning of a fresh copy at ``ratio``, and what it removed (for the checks)."""

    ratio: float
    module: nn.Module
    graph: Any  # the Torch-Pruning dependency graph of ``module``
    history: list[tuple[str, list[tuple[str, str, list[int]]]]] = field(default_factory=list)
    macs: int | None = None


def prune_channels(module: nn.Module, input_shape: tuple[int, ...], settings: ChannelSettings, *,
                   batches: Callable[[], Iterable] | None = None, seed: int = 0,
                   log: Callable[[str], None] = lambda message: None) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``module`` with channels removed per ``settings``, and the facts for the report.

    ``batches()`` yields (images, labels) training batches; only ``importance:
    taylor`` uses it. Raises :class:`PruneFailure` when no correct model results.
    """
    original = copy.deepcopy(module).eval()
    example = _example(original, input_shape)
    try:
        order, expected = run_traced(original, example)
    except TracedError as failed:
        raise PruneFailure(f"the model does not run on its example input {tuple(example.shape)}: "
                           f"{failed.cause}", fix="check model.input_shape in the recipe") from failed
    ignored, protected = _ignored(original, settings.ignore, order, expected)
    protected |= output_layers(original, example) - ignored  # every head of a multi-task model
    taylor = _taylor_batches(batches, settings.taylor_batches) if settings.importance == "taylor" else None

    def attempt(ratio: float) -> Attempt:
        return _prune_at(original, example, ratio, settings, ignored | protected, taylor, seed, log)

    before = model_stats(original, input_shape)
    if settings.target_macs is None:
        result = attempt(settings.ratio)
    else:
        ceiling = _max_ratio(original, ignored | protected, settings)
        result = _search(attempt, before["macs"], settings.target_macs, ceiling, input_shape)
    _verify(original, result, example, expected)
    result.module.train(module.training)
    details = _details(before, original, result, input_shape, settings, sorted(ignored), sorted(protected))
    if "hint" in details:
        log(details["hint"])
    return result.module, details


def _example(module: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return torch.zeros((1, *input_shape[1:]), device=device)


def _ignored(module: nn.Module, patterns, order: list[str], output: torch.Size) -> tuple[set[str], set[str]]:
    """Layers the user ignores, and the output layers that are always kept whole.

    The classifier must keep its outputs: the last Conv/Linear to run, and any
    whose width equals the number of outputs (e.g. a 1x1-conv head).
    """
    layers = prunable_layers(module)
    ignored = {n for hits in resolve_patterns(patterns, layers, key="ignore").values() for n in hits}
    classes = output[1] if len(output) >= 2 else None
    protected = {name for name, layer in layers.items() if _out_width(layer) == classes}
    executed = [name for name in order if name in layers]
    if executed:
        protected.add(executed[-1])
    return ignored, protected - ignored


def _taylor_batches(batches, count: int) -> list:
    found = list(itertools.islice(batches(), count)) if batches is not None else []
    if not found:
        raise PruneFailure("importance: taylor needs training batches, and the data has none",
                           fix="use importance: l1, or give the recipe a dataset with a train split")
    return found


def _importance(kind: str):
    import torch_pruning as tp

    if kind == "taylor":
        return tp.importance.TaylorImportance()
    if kind == "random":
        return tp.importance.RandomImportance()
    return tp.importance.MagnitudeImportance(p=1 if kind == "l1" else 2)


def _prune_at(original: nn.Module, example: torch.Tensor, ratio: float, settings: ChannelSettings,
              ignored: set[str], taylor: list | None, seed: int, log) -> Attempt:
    import torch_pruning as tp

    model = copy.deepcopy(original)
    names = {m: n for n, m in model.named_modules()}
    with _LoggedWarnings(log), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # random importance: the same channels for the same seed
        try:
            pruner = tp.pruner.MetaPruner(
                model, example, importance=_importance(settings.importance), pruning_ratio=ratio,
                global_pruning=settings.allocation == "global", iterative_steps=settings.steps,
                ignored_layers=[model.get_submodule(n) for n in sorted(ignored)], round_to=settings.round_to,
                output_transform=tasks.outputs_of)  # a multi-task model's tuple or dict: every output
        except Exception as exc:  # tracing raises whatever the model's ops raise
            cause = " ".join(str(exc).split()[:60])
            raise PruneFailure(f"Torch-Pruning cannot trace the model: {type(exc).__name__}: {cause}",
                               fix="add the layer or block named above to `ignore:`") from exc
        _refuse_unrebuildable(pruner, model, names)
        result = Attempt(ratio, model, pruner.DG)
        for _ in range(settings.steps):
            if taylor is not None:
                _accumulate_gradients(model, taylor)
            for group in pruner.step(interactive=True):
                result.history.append(_record(group, pruner.DG, names))
                group.prune()
    model.zero_grad(set_to_none=True)
    return result


class _LoggedWarnings(warnings.catch_warnings):
    """Pass Torch-Pruning's warnings (e.g. unwrapped parameters) to the run log, once each."""

    def __init__(self, log) -> None:
        super().__init__(record=True)
        self.log = log

    def __enter__(self):
        self.seen = super().__enter__()
        warnings.simplefilter("always")
        return self.seen

    def __exit__(self, *exc_info):
        super().__exit__(*exc_info)
        for message in dict.fromkeys(str(w.message).strip() for w in self.seen):
            self.log(f"torch-pruning: {message.splitlines()[0]}")


def _refuse_unrebuildable(pruner, model: nn.Module, names: dict[nn.Module, str]) -> None:
    """Fail before pruning if a group would resize something modelzip cannot save and reload."""
    param_names = {p: n for n, p in model.named_parameters()}
    offenders: dict[str, set[str]] = {}
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):
        root = names.get(group[0].dep.target.module, "?")
        for dep, _ in group:
            target = dep.target.module
            if isinstance(target, nn.Parameter):
                what = f"parameter '{param_names.get(target, '?')}'"
            elif target in names and type(target) not in REBUILDABLE and _owns_tensors(target):
                what = f"'{names[target]}' ({type(target).__name__})"
            else:
                continue
            offenders.setdefault(what, set()).add(root)
    if offenders:
        roots = sorted(set().union(*offenders.values()))
        raise PruneFailure(
            f"pruning would resize {', '.join(sorted(offenders))}, which modelzip cannot save and "
            "rebuild (it rebuilds Conv1d, Conv2d, Linear, BatchNorm1d and BatchNorm2d)",
            got=sorted(offenders), expected="only rebuildable layers change shape",
            fix=f"add the layers whose channels reach it to `ignore:`, e.g. ignore: {roots}")


def _owns_tensors(module: nn.Module) -> bool:
    return any(True for _ in itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False)))


def _accumulate_gradients(model: nn.Module, batches: list) -> None:
    """Gradients of the cross-entropy for Taylor importance (eval mode: BN statistics stay put)."""
    device = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for images, labels in batches:
            loss = tasks.weighted_loss(model(images.to(device)), tasks.to_device(labels, device),
                                       lambda _task, logits, target: nn.functional.cross_entropy(logits, target))
            loss.backward()


def _record(group, graph, names: dict[nn.Module, str]) -> tuple[str, list[tuple[str, str, list[int]]]]:
    """(root layer, [(layer, "in"/"out", channel indices at that moment)]) of a group about to be pruned."""
    operations = []
    for dep, idxs in group:
        name = names.get(dep.target.module)
        if name is None:  # Torch-Pruning's own nodes (additions, concatenations, reshapes)
            continue
        side = ("out" if graph.is_out_channel_pruning_fn(dep.handler)
                else "in" if graph.is_in_channel_pruning_fn(dep.handler) else None)
        if side is not None:
            operations.append((name, side, [int(getattr(i, "idx", i)) for i in idxs]))
    return names.get(group[0].dep.target.module, "?"), operations


def _max_ratio(original: nn.Module, kept_whole: set[str], settings: ChannelSettings) -> float:
    """The highest uniform ratio that empties no layer once widths are rounded to ``round_to``.

    Beyond it Torch-Pruning leaves a layer it would empty untouched, so MACs jump
    back up and a bisection would be misled. Global allocation has no such bound.
    """
    if settings.allocation == "global":
        return MAX_SEARCH_RATIO
    quantum = settings.round_to or 1
    widths = [width for name, layer in prunable_layers(original).items()
              if name not in kept_whole and (width := _out_width(layer)) and width > quantum]
    # int(width * (1 - ratio)) must stay >= quantum; the 0.5 keeps float rounding off the edge.
    return min([MAX_SEARCH_RATIO, *(1.0 - (quantum + 0.5) / width for width in widths)])


def _search(attempt, base_macs: int, fraction: float, ceiling: float,
            input_shape: tuple[int, ...]) -> Attempt:
    """The least pruning whose MACs are at or below ``fraction`` of ``base_macs`` (bisection on the ratio)."""
    from modelzip.evaluation.torch_stats import torch_macs

    target = fraction * base_macs
    best: Attempt | None = None
    lowest = base_macs
    low, high = 0.0, ceiling
    # A conv's MACs scale with in x out channels, both cut by the ratio: start there.
    ratio = min(max(1.0 - math.sqrt(fraction), 0.01), ceiling)
    for probe_number in range(SEARCH_PROBES + 1):
        probe = attempt(ratio)
        probe.macs = torch_macs(probe.module, input_shape)
        lowest = min(lowest, probe.macs)
        if probe.macs <= target:
            high = ratio
            if best is None or probe.macs > best.macs:
                best = probe
        else:
            low = ratio
        if best is not None and (best.macs >= target * (1 - CLOSE_ENOUGH) or high - low < 1e-3):
            break
        # Bisection only approaches the ceiling: try it outright before giving up.
        ratio = ceiling if best is None and probe_number == SEARCH_PROBES - 1 else (low + high) / 2
    if best is None:
        raise PruneFailure(
            f"target_macs {fraction} is out of reach: the smallest model found keeps "
            f"{percent(lowest, base_macs)} of the MACs (at most {ceiling:.0%} of a layer's channels go)",
            got=fraction, expected=f">= {lowest / base_macs:.3f}",
            fix="raise target_macs, ignore fewer layers, lower round_to, or change allocation")
    return best


def _verify(original: nn.Module, result: Attempt, example: torch.Tensor, expected: torch.Size) -> None:
    """The three checks of the module docstring (the first ran before pruning)."""
    pruned = result.module.eval()
    failure = _forward_failure(pruned, example, expected)
    if failure:
        raise failure
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((2, *example.shape[1:]), generator=generator).to(example.device)
    masked, kept = masked_original(original, result.history)
    culprit = first_divergence(pruned, masked, sample, kept)
    if culprit is not None:
        layer, diff = culprit
        feeders = feeding_layers(result.graph, pruned, layer)
        raise PruneFailure(
            f"after pruning, layer '{layer}' computes something other than the original with the "
            "removed channels cut: an op between its producers and it (a channel shuffle, slice, "
            "reshape or custom parameter) is not understood by Torch-Pruning",
            got=f"max |diff| {diff:.3g} on the kept channels of '{layer}'", expected="0 (up to rounding)",
            fix=f"add the layers that feed it to `ignore:`, e.g. ignore: {feeders or [layer]}")


def _forward_failure(pruned: nn.Module, example: torch.Tensor, expected: torch.Size) -> PruneFailure | None:
    try:
        order, output = run_traced(pruned, example)
    except TracedError as failed:
        where = f"in '{failed.active or type(pruned).__name__}'"
        after = f" right after layer '{failed.last}'" if failed.last else ""
        return PruneFailure(
            f"the pruned model fails its forward pass {where}{after}: {failed.cause}",
            fix=f"add {[failed.last] if failed.last else 'the layers feeding it'} to `ignore:`; a forward() "
                "that hard-codes channel counts (view/reshape/slicing with constants) cannot follow pruning")
    if output != expected:
        return PruneFailure("pruning changed the model's output shape", got=tuple(output),
                            expected=tuple(expected), fix=f"add {order[-1:]} to `ignore:`")
    return None


def _details(before: dict[str, int], original: nn.Module, result: Attempt, input_shape: tuple[int, ...],
             settings: ChannelSettings, ignored: list[str], protected: list[str]) -> dict[str, Any]:
    pruned = result.module
    widths = {name: [_out_width(layer), _out_width(pruned.get_submodule(name))]
              for name, layer in prunable_layers(original).items()}
    if all(old == new for old, new in widths.values()):
        raise PruneFailure("nothing was pruned: every layer is ignored or coupled to an ignored one",
                           got=f"ignore: {ignored}, always kept: {protected}", fix="ignore fewer layers")
    after = model_stats(pruned, input_shape)
    kept = after["macs"] / before["macs"]
    head = (f"kept {kept:.1%} of MACs (target {settings.target_macs:.0%})" if settings.target_macs is not None
            else f"removed {1 - kept:.1%} of MACs")
    details = {
        "method": "channel", "effect": "removed", "importance": settings.importance,
        "allocation": settings.allocation, "ratio": round(result.ratio, 4),
        "target_macs": settings.target_macs,
        "macs_kept": round(kept, 4), "steps": settings.steps, "round_to": settings.round_to,
        "ignored": ignored, "always_kept": protected,
        "unchanged": [n for n, (old, new) in widths.items() if old == new and n not in ignored + protected],
        "widths": widths, **before_after(before, after),
        "summary": (f"{head}: {millions(before['macs'])} -> {millions(after['macs'])}; "
                    f"widths {_transitions(widths)}")}
    if settings.round_to is None and any(new % 8 for old, new in widths.values() if old != new):
        # Measured: fashion_cnn at 50% of the MACs with widths 22/45/181 ran no faster in
        # onnxruntime than the original; with widths in multiples of 16, 1.6x faster.
        details["hint"] = ("channel counts that are not multiples of 8 (AVX2) or 16 (AVX-512) fall out of "
                           "onnxruntime's blocked CPU convolutions, which can eat the speedup: try round_to: "
                           "auto (the default)")
    return details


def _transitions(widths: dict[str, list[int]], shown: int = 4) -> str:
    """'32->16, 64->32 x3': distinct width changes in network order, repeats counted."""
    counts = Counter(f"{old}->{new}" for old, new in widths.values() if old != new)
    parts = [change + (f" x{count}" if count > 1 else "") for change, count in counts.items()]
    return ", ".join(parts[:shown]) + (f", +{len(parts) - shown} more" if len(parts) > shown else "")


def _out_width(layer: nn.Module) -> int | None:
    return getattr(layer, "out_channels", getattr(layer, "out_features", None))
