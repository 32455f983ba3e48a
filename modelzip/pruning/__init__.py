"""The heavy half of the ``prune`` pass: what both pruning methods share.

``modelzip.passes.prune`` holds the config and stays light; it maps the config to
plain settings and imports
:mod:`modelzip.pruning.magnitude` or :mod:`modelzip.pruning.channel` inside
``run``. Both return a new module and never touch the one they are given.

Module patterns (``ignore:``, ``layers:``) are ``fnmatch`` globs on qualified
module names (``features.0``, ``layer1.0.conv2``). A pattern that names a block
covers every layer inside it, so ``ignore: [classifier]`` keeps the whole head.
A pattern that covers no prunable layer is an error: a typo must not silently
prune the layer it was meant to protect.
"""
from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from modelzip.errors import MachineryFailure

# Layers whose weights either method prunes. Transposed convolutions share the
# base class but lay out their weights the other way round; magnitude pruning
# does not care, and channel pruning checks module types separately.
PRUNABLE_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


class PruneFailure(MachineryFailure):
    """A pruning run that cannot give a correct model; the pass turns it into a PassError."""


def prunable_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Conv and Linear layers by qualified name, in definition order."""
    return {name: m for name, m in module.named_modules() if name and isinstance(m, PRUNABLE_TYPES)}


def covers(pattern: str, name: str) -> bool:
    """True if ``pattern`` matches ``name`` or one of its parents (``layer1`` covers ``layer1.0.conv1``)."""
    parts = name.split(".")
    return any(fnmatchcase(".".join(parts[:end]), pattern) for end in range(1, len(parts) + 1))


def resolve_patterns(patterns: Iterable[str], names: Iterable[str], *, key: str) -> dict[str, list[str]]:
    """The layer names each pattern covers; a pattern covering none is a PruneFailure."""
    names = list(names)
    resolved = {pattern: [n for n in names if covers(pattern, n)] for pattern in patterns}
    unmatched = [p for p, hits in resolved.items() if not hits]
    if unmatched:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise PruneFailure(
            f"`{key}` pattern(s) {unmatched} cover no Conv/Linear layer of the model",
            got=unmatched, expected=f"globs on layer names: {shown}",
            fix="fix the pattern; a block's name (e.g. 'layer1') covers every layer inside it")
    return resolved


def model_stats(module: nn.Module, input_shape: tuple[int, ...], *, zipped: bool = False) -> dict[str, int]:
    """Parameters (total, non-zero), MACs per sample and checkpoint bytes (and deflated, if ``zipped``).

    Deflating costs seconds for a large checkpoint, so only magnitude pruning,
    whose zeros show up nowhere else before export, asks for it.
    """
    import torch

    from modelzip.evaluation.torch_stats import count_params, torch_macs

    total, nonzero = count_params(module)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    stats = {"params_total": total, "params_nonzero": nonzero, "macs": torch_macs(module, input_shape),
             "state_dict_bytes": buffer.getbuffer().nbytes}
    if zipped:
        stats["state_dict_zip_bytes"] = len(zlib.compress(buffer.getvalue(), 9))
    return stats


def check_reloadable(module: nn.Module, build_module: Callable[[], nn.Module]) -> None:
    """Rebuild the architecture from its source and load ``module``'s weights, as the cache will."""
    from modelzip import structure

    fresh = build_module()
    try:
        structure.rebuild(fresh, structure.describe(module))
        fresh.load_state_dict(module.state_dict(), strict=True)
    except (ValueError, RuntimeError) as exc:
        raise PruneFailure(
            "the pruned model cannot be rebuilt from its saved form (state_dict + structure manifest)",
            got=" ".join(str(exc).split()[:40]) or type(exc).__name__,
            fix="add the layer named above, or the layers feeding it, to `ignore:`") from exc


def percent(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"


def millions(value: float) -> str:
    return f"{value / 1e6:.2f} M"


def before_after(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, Any]:
    """The report's shape for a step's static figures: {"before": {...}, "after": {...}}."""
    return {"before": dict(before), "after": dict(after)}
