"""Save and restore a module's *structure* without pickling it.

Compression passes change shapes (channel pruning) or swap layers (low-rank
Linear -> two Linears). A state_dict alone cannot be loaded into the original
architecture after that, and pickling the whole module would run arbitrary
code on load. Instead we record, for every module of an allow-listed type,
its type and constructor arguments; on load we rebuild the architecture from
its source, replace the modules whose recorded form differs, and then load the
state_dict with ``weights_only=True``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Module types we know how to construct from plain data (type name -> ctor-arg reader).
_CONV_TYPES = (nn.Conv1d, nn.Conv2d)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


def _conv_args(m: nn.Module) -> dict[str, Any]:
    return {
        "in_channels": m.in_channels, "out_channels": m.out_channels,
        "kernel_size": list(m.kernel_size), "stride": list(m.stride),
        "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
        "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
        "padding_mode": m.padding_mode,
    }


def _linear_args(m: nn.Module) -> dict[str, Any]:
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


def _norm_args(m: nn.Module) -> dict[str, Any]:
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
            "affine": m.affine, "track_running_stats": m.track_running_stats}


_READERS = {
    nn.Conv1d: _conv_args, nn.Conv2d: _conv_args, nn.Linear: _linear_args,
    nn.BatchNorm1d: _norm_args, nn.BatchNorm2d: _norm_args,
    nn.Sequential: lambda m: {}, nn.Identity: lambda m: {},
}
_TYPES = {f"torch.nn.{cls.__name__}": cls for cls in _READERS}


def describe(module: nn.Module) -> dict[str, dict[str, Any]]:
    """Type and constructor arguments of every allow-listed submodule, by qualified name."""
    manifest = {}
    for name, sub in module.named_modules():
        reader = _READERS.get(type(sub))
        if name and reader is not None:
            manifest[name] = {"type": f"torch.nn.{type(sub).__name__}", "args": reader(sub)}
    return manifest


def rebuild(module: nn.Module, manifest: dict[str, dict[str, Any]]) -> nn.Module:
    """Replace submodules of ``module`` whose form differs from ``manifest`` (in place)."""
    current = describe(module)
    # Parents before children, so a new Sequential exists before its members are set.
    for name in sorted(manifest, key=lambda n: n.count(".")):
        entry = manifest[name]
        if current.get(name) == entry:
            continue
        cls = _TYPES.get(entry["type"])
        if cls is None:
            raise ValueError(f"cannot rebuild module {name!r} of type {entry['type']!r}")
        _set_submodule(module, name, cls(**_ctor_args(entry["args"])))
    return module


def _ctor_args(args: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    parent.add_module(child, new)  # replaces an existing child of that name


def save(module: nn.Module, weights_path, manifest_path) -> None:
    """Write ``state_dict`` and structure manifest (callers make the paths atomic)."""
    import json

    torch.save(module.state_dict(), weights_path)
    manifest_path.write_text(json.dumps(describe(module), indent=1, sort_keys=True))
