"""finetune's ``prune:`` parameters: magnitude pruning while it trains, gradual or one-shot.

Light (no torch): the finetune pass module imports it at module level; the machinery is
modelzip.pruning.gradual, wired to the training loop by modelzip.passes._training.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from modelzip.plugin import PassConfig

Glob = Annotated[str, Field(min_length=1)]


class GradualPruneConfig(PassConfig):
    # `end` and `updates` shape the cubic ramp; a one-shot cut has none.
    applies_to = {"end": {"schedule": ("gradual",)}, "updates": {"schedule": ("gradual",)}}
    # Validators read fields declared earlier (info.data): `start` and `schedule` before `end`.
    method: Literal["magnitude"] = Field(
        description="magnitude (the only one for now): zero the smallest |w| of Conv/Linear weights, "
                    "as prune's method: magnitude (masked: dense shapes, smaller zip, no speedup)")
    sparsity: float = Field(gt=0, lt=1, description="final fraction of the covered weights at zero, 0 < s < 1")
    schedule: Literal["gradual", "oneshot"] = Field(
        "gradual", description="gradual: sparsity rises from 0 on Zhu & Gupta's cubic ramp between "
                               "`start` and `end`, masks recomputed `updates` times; oneshot: all at "
                               "once at `start`")
    scope: Literal["lamp", "global", "layer"] = Field(
        "lamp", description="lamp (default): one threshold across layers on layer-normalized "
                            "magnitudes (LAMP, Lee et al. 2021), which never empties a layer whose weights "
                            "are small by construction; global: one threshold on |w|; layer: `sparsity` in "
                            "every layer")
    ignore: tuple[Glob, ...] = Field(
        (), description="globs on module names kept dense; a block's name covers its layers")
    start: float = Field(
        0.0, ge=0, lt=1, description="fraction of the optimizer steps after which pruning begins")
    end: float = Field(
        0.75, gt=0, le=1, validate_default=True,
        description="gradual: fraction of the optimizer steps at which the final sparsity is reached; "
                    "the rest trains at it (only those epochs can be kept as the best)")
    updates: int = Field(16, ge=1, le=10_000, description="gradual: mask updates between start and end")

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, value: float, info: ValidationInfo) -> float:
        start = info.data.get("start")
        if info.data.get("schedule") == "gradual" and start is not None and value <= start:
            raise ValueError(f"`end` ({value:g}) must be after `start` ({start:g}): the ramp runs from "
                             "start to end, as fractions of the optimizer steps")
        return value


def gradual_settings(config: GradualPruneConfig):
    """The machinery's settings (imports torch: call it inside ``run``)."""
    from modelzip.pruning.gradual import GradualSettings

    return GradualSettings(sparsity=config.sparsity, schedule=config.schedule, scope=config.scope,
                           ignore=tuple(config.ignore), start=config.start, end=config.end,
                           updates=config.updates)
