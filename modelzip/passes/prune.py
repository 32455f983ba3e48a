"""prune: remove channels (smaller, faster model) or zero weights (smaller zip, same shapes).

``method: channel`` physically removes filters with Torch-Pruning's dependency
graph: MACs, parameters, file size and latency fall. ``method: magnitude``
zeroes the smallest weights in place: shapes stay dense, so it is no faster by
itself, but the zeros survive fine-tuning and export and shrink the zipped
file. The report says which one happened (``effect: removed | masked``).

Light module: the work lives in ``modelzip.pruning`` and is imported in ``run``.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from modelzip.envinfo import AUTO_ROUND_TO
from modelzip.passes._bn import RECALIBRATE_IMAGES, RecalibrateBN, recalibrated
from modelzip.passes.finetune import FinetunePass
from modelzip.plugin import Pass, PassConfig
from modelzip.registry import suggest

Glob = Annotated[str, Field(min_length=1)]
# A channel multiple, "auto" (resolved at run time from the runtime and CPU), or null: none.
RoundTo = Literal["auto"] | Annotated[int, Field(ge=1, le=512)] | None
Sparsity = Annotated[float, Field(ge=0, lt=1)]
Fraction = Annotated[float, Field(gt=0, lt=1)]

# Which parameters belong to which choice: one written under another choice is an error
# (PassConfig.applies_to), not a silently ignored key.
_APPLIES_TO = {
    **{name: {"method": ("magnitude",)} for name in ("sparsity", "scope", "layers")},
    **{name: {"method": ("channel",)}
       for name in ("importance", "ratio", "target_macs", "allocation", "round_to", "steps", "check_speed")},
    "taylor_batches": {"method": ("channel",), "importance": ("taylor",)},
    **{name: {"method": ("channel",), "target_macs": ("auto",)}
       for name in ("max_accuracy_drop", "finetune_epochs", "search_steps", "search_range")},
}


class PruneConfig(PassConfig):
    applies_to = _APPLIES_TO
    # Validators read fields declared earlier (info.data): `method` comes first, `importance`
    # before `taylor_batches`, `ratio` before `target_macs`.
    method: Literal["magnitude", "channel"] = Field(
        description="channel: remove whole filters/channels (real speedup); "
                    "magnitude: zero the smallest weights (dense shapes, smaller zip, no speedup)")
    ignore: tuple[Glob, ...] = Field(
        (), description="globs on module names kept unpruned; a block's name covers its layers "
                        "(the final classifier's outputs are never pruned)")
    sparsity: Sparsity | None = Field(
        None, validate_default=True,
        description="magnitude: fraction of the covered weights set to zero, 0 <= s < 1")
    scope: Literal["lamp", "global", "layer"] = Field(
        "lamp", description="magnitude: lamp (default): one threshold across layers on layer-normalized "
                            "magnitudes (LAMP, Lee et al. 2021), which never empties a layer whose weights "
                            "are small by construction; global: one threshold on |w|; layer: `sparsity` in "
                            "every layer")
    layers: dict[Glob, Sparsity] = Field(
        {},  # pydantic copies a mutable default per instance
        description="magnitude: per-layer sparsity, {glob: s}; the first matching glob wins")
    importance: Literal["l1", "l2", "taylor", "random"] = Field(
        "l1", description="channel: how channels are ranked; taylor uses gradients on training batches")
    ratio: float | None = Field(
        None, gt=0, le=0.9, description="channel: fraction of each layer's channels removed")
    target_macs: Fraction | Literal["auto"] | None = Field(
        None, description="channel: fraction of the input model's MACs to keep; the ratio is searched "
                          "so the result lands at or just below it. auto: the smallest fraction whose "
                          "briefly fine-tuned model stays within `max_accuracy_drop` (a search)")
    allocation: Literal["uniform", "global"] = Field(
        "uniform", description="channel: the same ratio in every layer, or one ranking across all layers "
                               "(global can thin some layers to a single channel)")
    round_to: RoundTo = Field(
        AUTO_ROUND_TO, description="channel: keep channel counts multiples of this; auto: what onnxruntime "
                                   "runs fast on this CPU (16 with AVX-512, else 8); null or 1: no rounding")
    steps: int = Field(
        1, ge=1, le=50, description="channel: reach the ratio in this many pruning steps, "
                                    "re-ranking channels after each")
    taylor_batches: int = Field(
        4, ge=1, le=1000, description="channel, importance taylor: training batches for the gradients")
    recalibrate_bn: RecalibrateBN = RECALIBRATE_IMAGES
    check_speed: bool = Field(
        True, description="channel: time the pruned model against its input in onnxruntime (at "
                          "data.batch_size, a few seconds); if it is not faster and round_to is auto, "
                          "prune again with coarser rounding (x2, twice at most); the report says why")
    # target_macs: auto (the search: modelzip/pruning/budget.py, trials: passes/_prune_search.py)
    max_accuracy_drop: float | None = Field(
        None, ge=0, lt=1, validate_default=True,
        description="target_macs auto (required): the largest validation-accuracy drop allowed, as a "
                    "fraction (0.01 = 1 percentage point below the input model)")
    finetune_epochs: int = Field(
        1, ge=1, le=100, description="target_macs auto: epochs of distilled fine-tuning per trial (the "
                                     "finetune pass's defaults, teacher: input); the output has them too")
    search_steps: int = Field(
        4, ge=1, le=20, description="target_macs auto: bisection halvings after both ends of "
                                    "search_range are tried (at most search_steps + 2 trials)")
    search_range: tuple[Fraction, Fraction] = Field(
        (0.1, 0.9), description="target_macs auto: [lowest, highest] fraction of MACs searched")

    @field_validator("sparsity")
    @classmethod
    def _sparsity_given(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is None and info.data.get("method") == "magnitude":
            raise ValueError("method: magnitude needs `sparsity`, the fraction of weights to zero")
        return value

    @field_validator("target_macs", mode="wrap")
    @classmethod
    def _fraction_or_auto(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> float | str | None:
        try:
            return handler(value)
        except ValidationError:  # one message instead of one per member of the union
            hint = suggest(value, ["auto"]) if isinstance(value, str) else None
            raise ValueError("target_macs is the fraction of the MACs to keep, 0 < t < 1, or auto"
                             + (f" ({hint})" if hint else "")) from None

    @field_validator("target_macs")
    @classmethod
    def _one_target(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("ratio") is not None:
            raise ValueError("give either `ratio` or `target_macs`, not both")
        return value

    @field_validator("max_accuracy_drop")
    @classmethod
    def _budget_given(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is None and info.data.get("target_macs") == "auto":
            raise ValueError("target_macs: auto needs `max_accuracy_drop`, the validation accuracy the "
                             "search may give up, e.g. 0.01 (1 percentage point)")
        return value

    @field_validator("search_range")
    @classmethod
    def _range_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] >= value[1]:
            raise ValueError(f"search_range is [lowest, highest] with lowest < highest, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _channel_target(self) -> PruneConfig:
        if self.method == "channel" and self.ratio is None and self.target_macs is None:
            raise ValueError("method: channel needs `ratio` (fraction of channels removed per layer) "
                             "or `target_macs` (fraction of MACs kept)")
        return self


class PrunePass(Pass):
    name = "prune"
    summary = "Remove channels (smaller, faster) or zero the smallest weights (smaller zip)"
    Config = PruneConfig
    # 4: BatchNorm recalibration, round_to auto and the speed check by default (each changes results
    # for the same params); target_macs: auto fine-tunes with the finetune pass's machinery, so its
    # version is part of ours.
    version = f"4+finetune{FinetunePass.version}"
    # "timing" and "cpu": the speed check times models, and round_to auto follows the CPU's flags.
    reads = frozenset({"data", "timing", "cpu"})

    def reads_for(self, config: PruneConfig) -> frozenset[str]:
        channel = config.method == "channel"
        return frozenset(
            ({"data"} if channel or config.recalibrate_bn else set())
            | ({"timing"} if channel and config.check_speed and config.target_macs != "auto" else set())
            | ({"cpu"} if channel and config.round_to == AUTO_ROUND_TO else set()))

    def run(self, artifact, config: PruneConfig, ctx):
        from modelzip.errors import PassError
        from modelzip.pruning import PruneFailure

        try:
            module, details = self._prune(artifact, config, ctx)
        except PruneFailure as failure:
            raise PassError(failure.what, pass_name=self.name, step=ctx.step, **failure.fields()) from failure
        if config.target_macs != "auto":  # the search recalibrated each trial before fine-tuning it
            details = recalibrated(details, module, config.recalibrate_bn, ctx)
        ctx.record(**details)
        ctx.log(details["summary"])
        return artifact.evolve(module=module)

    def _prune(self, artifact, config: PruneConfig, ctx):
        if config.method == "magnitude":
            from modelzip.pruning.magnitude import prune_magnitude

            return prune_magnitude(artifact.module, artifact.input_shape, sparsity=config.sparsity,
                                   scope=config.scope, layers=config.layers, ignore=config.ignore)
        return _prune_channels(artifact, config, ctx, pass_name=self.name)


def _prune_channels(artifact, config: PruneConfig, ctx, *, pass_name: str):
    """``method: channel``: a fixed target with the speed check (or without), or target_macs: auto's
    search; round_to auto resolved here, with its fallback to finer rounding on a narrow model."""
    from dataclasses import replace
    from functools import partial

    from modelzip.envinfo import auto_record, auto_round_to
    from modelzip.pruning import check_reloadable
    from modelzip.pruning.channel import prune_channels

    round_to, auto = auto_round_to(config.round_to)
    batches = lambda: ctx.data.batches("train", shuffle=True, seed=ctx.seed)  # noqa: E731

    def prune(round_to: int | None, target_macs: float | None = None):
        settings = channel_settings(config, round_to)
        if target_macs is not None:  # a trial of target_macs: auto
            settings = replace(settings, target_macs=target_macs)
        module, details = prune_channels(artifact.module, artifact.input_shape, settings,
                                         batches=batches, seed=ctx.seed, log=ctx.log)
        check_reloadable(module, ctx.build_module)
        return module, details

    def with_rounding(pruned):  # round_to auto's record, with the value actually used
        module, details = pruned
        return module, ({**details, "round_to": auto_record(auto, details.get("round_to"))} if auto else details)

    def at_auto(attempt):
        return finer_when_unreachable(attempt, round_to, ctx.log) if auto else attempt

    if config.target_macs == "auto":  # trials of prune + short fine-tune; no speed check
        from modelzip.passes._prune_search import prune_within_budget

        def prune_at(target: float):
            return at_auto(partial(prune, target_macs=target))(round_to)

        return with_rounding(prune_within_budget(artifact, config, ctx, prune_at))
    if not config.check_speed:
        return with_rounding(at_auto(prune)(round_to))
    from modelzip.passes._prune_speed import prune_checked

    return prune_checked(at_auto(prune), round_to, auto, artifact, ctx, pass_name=pass_name)


def finer_when_unreachable(prune, auto_value: int, log):
    """``prune(round_to)`` that, for round_to auto's own value, falls back to finer rounding (half,
    down to none) when the target cannot be reached in those multiples: a narrow model (every
    layer 16 channels or fewer) must not fail where an explicit ``round_to: null`` would work."""
    from modelzip.pruning import PruneFailure

    def attempt(round_to: int | None):
        if round_to != auto_value:
            return prune(round_to)
        finer = [auto_value >> shift for shift in range(1, auto_value.bit_length()) if auto_value >> shift > 1]
        for candidate in [round_to, *finer]:
            try:
                return prune(candidate)
            except PruneFailure as failure:
                log(f"round_to {candidate} (auto): {failure.what}; trying finer rounding")
        return prune(None)  # no rounding at all: its failure is the pass's

    return attempt


def channel_settings(config: PruneConfig, round_to: int | None = None):
    """``method: channel``'s parameters as the machinery's settings (imports torch). ``round_to`` is
    the rounding used when config.round_to is auto (the pass resolves it; None: no rounding)."""
    from modelzip.pruning.channel import ChannelSettings

    if isinstance(config.round_to, int):
        round_to = None if config.round_to == 1 else config.round_to
    return ChannelSettings(ratio=config.ratio, target_macs=config.target_macs, ignore=tuple(config.ignore),
                           importance=config.importance, allocation=config.allocation,
                           round_to=round_to, steps=config.steps,
                           taylor_batches=config.taylor_batches)
