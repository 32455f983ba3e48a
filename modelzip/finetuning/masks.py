"""Keep exactly-zero weights at zero while fine-tuning.

Contract with pruning passes that zero weights in place (e.g. ``prune: magnitude``):
fine-tuning never revives an exactly-zero weight. A dense trained Conv/Linear
weight has essentially no exact zeros, so any tensor with more than
``MASK_THRESHOLD`` of them was pruned on purpose and gets a mask, which is
re-applied after every optimizer step (momentum and weight decay would
otherwise move the pruned weights off zero).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

MASK_THRESHOLD = 0.01  # fraction of exact zeros above which a weight counts as pruned
_MASKABLE = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass
class ZeroMasks:
    """Masks (``weight != 0``) of the Conv/Linear weights that arrived sparse."""

    names: list[str] = field(default_factory=list)
    weights: list[Tensor] = field(default_factory=list)
    masks: list[Tensor] = field(default_factory=list)

    @classmethod
    def capture(cls, model: nn.Module, threshold: float = MASK_THRESHOLD) -> ZeroMasks:
        found = cls()
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if not isinstance(module, _MASKABLE) or weight is None or weight.numel() == 0:
                continue
            nonzero = weight.detach() != 0
            if 1.0 - nonzero.float().mean().item() > threshold:
                found.names.append(f"{name}.weight" if name else "weight")
                found.weights.append(weight)
                found.masks.append(nonzero.to(weight.dtype))
        return found

    def __bool__(self) -> bool:
        return bool(self.weights)

    @torch.no_grad()
    def apply(self) -> None:
        if self.weights:
            torch._foreach_mul_(self.weights, self.masks)
            # A negative weight times 0 is -0.0, which compresses worse than +0.0 in the exported
            # file (164k of them cost 14% more zip on fashion_cnn at 90%); -0.0 + 0.0 is +0.0.
            torch._foreach_add_(self.weights, 0.0)

    def summary(self) -> dict:
        """Per masked tensor and overall: the zero fraction now (equal to the one captured)."""
        zeros = [int((w == 0).sum()) for w in self.weights]
        sizes = [w.numel() for w in self.weights]
        kept = all(int((m == 0).sum()) <= z for m, z in zip(self.masks, zeros))
        return {
            "masked_tensors": len(self.weights),
            "zero_fraction": round(sum(zeros) / sum(sizes), 6) if sizes else 0.0,
            "zeros_kept": kept,
            "tensors": {n: round(z / s, 6) for n, z, s in zip(self.names, zeros, sizes)},
        }
