"""Checks that a channel-pruned model is the original minus the removed channels.

Removing channel c of a producer is, for everything downstream, the same as
cutting c's contribution: zeroing the input weights that read c in every layer
that consumes it. So the original with those input weights zeroed (the "masked
original") must compute, on the channels that are kept, exactly what the pruned
model computes -- at every Conv/Linear/BatchNorm and at the output. The first
layer where they differ is where the dependency graph was wrong.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from modelzip import tasks
from modelzip.pruning import PRUNABLE_TYPES

_COMPARED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)
History = list[tuple[str, list[tuple[str, str, list[int]]]]]


class TracedError(Exception):
    """A forward pass failed; says in which module and after which layer."""

    def __init__(self, cause: str, *, active: str, last: str | None) -> None:
        self.cause, self.active, self.last = cause, active, last
        super().__init__(cause)


def run_traced(model: nn.Module, x: torch.Tensor) -> tuple[list[str], torch.Size]:
    """Run ``model(x)``: (module names in the order they finished, output shape).

    On failure raises TracedError with the innermost module that was running and
    the last Conv/Linear that had finished, which is what a user can ``ignore:``.
    """
    stack: list[str] = []
    order: list[str] = []
    hooks = []

    def finished(name: str) -> None:  # a forward hook must return None, or it replaces the output
        stack.pop()
        order.append(name)

    for name, module in model.named_modules():
        hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: stack.append(name)))
        hooks.append(module.register_forward_hook(lambda m, a, o, name=name: finished(name)))
    try:
        with torch.no_grad():
            output = _first_tensor(model(x))
    except Exception as exc:
        layers = [n for n in order if isinstance(model.get_submodule(n), PRUNABLE_TYPES)]
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TracedError(f"{type(exc).__name__}: {first_line}", active=stack[-1] if stack else "",
                          last=layers[-1] if layers else None) from exc
    finally:
        for hook in hooks:
            hook.remove()
    return order, output.shape


def masked_original(original: nn.Module, history: History) -> tuple[nn.Module, dict[str, list[int]]]:
    """The original with removed channels' consumers zeroed, and each layer's kept output channels.

    ``history`` lists, group by group in pruning order, (layer, "in"/"out",
    indices); indices refer to the layer as it was at that moment, so they are
    replayed against lists of the surviving original indices.
    """
    masked = copy.deepcopy(original)
    alive: dict[tuple[str, str], list[int]] = {}
    with torch.no_grad():
        for _root, operations in history:
            done: set[str] = set()
            for name, side, indices in operations:
                layer = masked.get_submodule(name)
                if _is_depthwise(layer):
                    # Its input channel i is its output channel i: one list, removed once per group.
                    if name in done:
                        continue
                    done.add(name)
                    side = "out"
                width = _width(layer, side)
                if width is None:
                    continue
                removed = _take(alive, (name, side), width, indices)
                if side == "in" and isinstance(layer, PRUNABLE_TYPES):
                    _zero_inputs(layer, removed)
    kept = {name: channels for (name, side), channels in alive.items() if side == "out"}
    return masked, kept


def first_divergence(pruned: nn.Module, masked: nn.Module, x: torch.Tensor,
                     kept: dict[str, list[int]]) -> tuple[str, float] | None:
    """The first layer (in execution order) whose kept outputs differ, with the max |diff|; else None."""
    got, expected = _capture(pruned, x), _capture(masked, x)
    for name, output in got.items():
        reference = expected.get(name)
        if reference is None:
            continue
        if name in kept:
            dim = -1 if isinstance(masked.get_submodule(name), nn.Linear) else 1
            reference = reference.index_select(dim, torch.tensor(kept[name], device=reference.device))
        if reference.shape != output.shape:
            return name or "<output>", float("inf")
        diff = float((output - reference).abs().max()) if output.numel() else 0.0
        if diff > 1e-4 + 1e-3 * float(reference.abs().max()):
            return name or "<output>", diff
    return None


def feeding_layers(graph: Any, pruned: nn.Module, layer: str) -> list[str]:
    """The nearest Conv/Linear layers upstream of ``layer`` in Torch-Pruning's graph."""
    names = {m: n for n, m in pruned.named_modules()}
    node = graph.module2node.get(pruned.get_submodule(layer)) if layer != "<output>" else None
    found, frontier, seen = set(), list(node.inputs) if node is not None else [], set()
    while frontier:
        current = frontier.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current.module, PRUNABLE_TYPES) and current.module in names:
            found.add(names[current.module])
        else:
            frontier.extend(current.inputs)
    return sorted(found)


def _capture(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of every Conv/Linear/BatchNorm (first call) and of the model ("") in finishing order."""
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str, output: Any) -> None:  # returns None: the module's output stays as it is
        outputs.setdefault(name, _first_tensor(output))

    hooks = [m.register_forward_hook(lambda m, a, o, name=name: keep(name, o))
             for name, m in model.named_modules() if isinstance(m, _COMPARED)]
    try:
        with torch.no_grad():
            outputs[""] = _first_tensor(model.eval()(x))
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def _take(alive: dict, key: tuple[str, str], width: int, indices: list[int]) -> list[int]:
    survivors = alive.setdefault(key, list(range(width)))
    removed = [survivors[i] for i in indices]
    for i in sorted(set(indices), reverse=True):
        del survivors[i]
    return removed


def _zero_inputs(layer: nn.Module, channels: list[int]) -> None:
    weight = layer.weight
    if isinstance(layer, nn.Linear):
        weight[:, channels] = 0.0
    elif layer.transposed:  # weight: (in, out / groups, ...)
        weight[channels] = 0.0
    else:  # weight: (out, in / groups, ...); input c feeds only the outputs of its group
        per_group_in, per_group_out = layer.in_channels // layer.groups, layer.out_channels // layer.groups
        for c in channels:
            group = c // per_group_in
            weight[group * per_group_out:(group + 1) * per_group_out, c % per_group_in] = 0.0


def _width(layer: nn.Module, side: str) -> int | None:
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return layer.num_features
    attribute = {"out": ("out_channels", "out_features"), "in": ("in_channels", "in_features")}[side]
    return getattr(layer, attribute[0], getattr(layer, attribute[1], None))


def _is_depthwise(layer: nn.Module) -> bool:
    return (isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1
            and layer.groups == layer.in_channels == layer.out_channels)


def _first_tensor(output: Any) -> torch.Tensor:
    while not isinstance(output, torch.Tensor):
        output = tasks.primary(output)  # a tuple's or a dict's first
    return output


def output_layers(model: nn.Module, x: torch.Tensor) -> set[str]:
    """The prunable layers whose output IS one of the model's outputs (or a view of it): each
    head of a multi-task model. Their output units are the classes, so they are never pruned."""
    produced: dict[int, str] = {}
    alive: list[torch.Tensor] = []  # held, so no later tensor reuses a freed one's memory address

    def seen(name: str, out: Any) -> None:  # a forward hook must return None, or it replaces the output
        if torch.is_tensor(out):
            alive.append(out)
            produced.setdefault(_storage(out), name)

    hooks = [layer.register_forward_hook(lambda m, a, out, name=name: seen(name, out))
             for name, layer in model.named_modules() if isinstance(layer, PRUNABLE_TYPES)]
    try:
        with torch.no_grad():
            outputs = tasks.outputs_of(model(x))
    finally:
        for hook in hooks:
            hook.remove()
    return {produced[_storage(t)] for t in outputs if torch.is_tensor(t) and _storage(t) in produced}


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()
