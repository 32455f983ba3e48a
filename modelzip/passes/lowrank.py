"""lowrank: replace Linear and Conv2d layers by two thinner ones (truncated SVD)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from modelzip.envinfo import AUTO_ROUND_TO
from modelzip.passes._bn import RECALIBRATE_IMAGES, RecalibrateBN, recalibrated
from modelzip.plugin import Pass, PassConfig


class LowRankConfig(PassConfig):
    energy: float | None = Field(
        None, gt=0, le=1,
        description="keep the smallest rank whose singular values retain this fraction of the squared spectrum")
    rank_ratio: float | None = Field(None, gt=0, le=1, description="keep this fraction of the full rank")
    conv: Literal["channel", "spatial", "none"] = Field(
        "channel", description="channel: kxk conv to r channels then 1x1; spatial: kx1 then 1xk; none: skip convs")
    linear: bool = Field(True, description="factorize Linear layers (in -> r -> out)")
    min_rank: int = Field(1, ge=1, le=65536, description="never go below this rank")
    round_to: Literal["auto"] | Annotated[int, Field(ge=1, le=65536)] = Field(
        AUTO_ROUND_TO,
        description="round each rank up to a multiple of this (capped at the full rank); auto: the block "
                    "onnxruntime's convolutions work on with this CPU (16 with AVX-512, else 8), which runs "
                    "other widths slower; 1: no rounding")
    ignore: tuple[str, ...] = Field((), description="glob patterns on module names to leave as they are")
    recalibrate_bn: RecalibrateBN = RECALIBRATE_IMAGES

    @model_validator(mode="after")
    def _one_target(self) -> LowRankConfig:
        if (self.energy is None) == (self.rank_ratio is None):
            raise ValueError("set exactly one of `energy` or `rank_ratio`")
        return self


class LowRankPass(Pass):
    name = "lowrank"
    summary = "Factorize Linear/Conv2d layers by truncated SVD where it cuts MACs and parameters"
    Config = LowRankConfig
    consumes = ("torch",)
    # 3: BatchNorm statistics recalibrated by default; round_to auto (8 on CPUs without AVX-512)
    version = "3"
    # Training images for the BatchNorm statistics; the CPU's flags for round_to auto (see reads_for).
    reads = frozenset({"data", "cpu"})

    def reads_for(self, config: LowRankConfig) -> frozenset[str]:
        # Without those the result is the SVD of the weights alone.
        return frozenset({"data"} if config.recalibrate_bn else set()) | (
            {"cpu"} if config.round_to == AUTO_ROUND_TO else set())

    def run(self, artifact, config: LowRankConfig, ctx):
        from modelzip.envinfo import auto_round_to
        from modelzip.lowrank.factorize import factorize_model

        round_to, auto = auto_round_to(config.round_to)
        module, records = factorize_model(artifact.module, lowrank_settings(config, round_to),
                                          artifact.input_shape)
        layers = [record.to_json() for record in records]
        changed = [layer for layer in layers if layer["factorized"]]
        summary = _summary(layers, changed) + (f"; ranks in multiples of {round_to} (auto)" if auto else "")
        details = {"layers": layers, "factorized": len(changed), "round_to": auto or round_to or 1,
                   "summary": summary}
        details = recalibrated(details, module, config.recalibrate_bn, ctx, changed=bool(changed))
        ctx.record(**details)
        ctx.log(details["summary"])
        ctx.record_table("per layer", LAYER_HEADER, [_layer_row(record) for record in records])
        return artifact.evolve(module=module)


def lowrank_settings(config: LowRankConfig, round_to: int | None = None):
    """The config as the machinery's settings (imports torch); ``round_to`` is the rounding used
    when config.round_to is auto (the pass resolves it; None: no rounding)."""
    from modelzip.lowrank.ranks import LowRankSettings

    rounding = config.round_to if isinstance(config.round_to, int) else round_to or 1
    return LowRankSettings(energy=config.energy, rank_ratio=config.rank_ratio, conv=config.conv,
                           linear=config.linear, min_rank=config.min_rank, round_to=rounding,
                           ignore=tuple(config.ignore))


LAYER_HEADER = ["layer", "kind", "rank / full", "energy kept", "params before -> after",
                "MACs before -> after", "factorized"]


def _layer_row(layer) -> list[str]:
    if not layer.decomposed:  # not decomposable at all (a grouped conv, say)
        return [layer.name, layer.kind, "", "", "", "", f"no: {layer.reason}"]
    return [layer.name, layer.kind, f"{layer.rank} / {layer.full_rank}", f"{layer.energy_kept:.3f}",
            f"{layer.params_before:,} -> {layer.params_after:,}",
            f"{layer.macs_before:,} -> {layer.macs_after:,}",
            "yes" if layer.factorized else f"no: {layer.reason}"]


def _summary(layers: list[dict], changed: list[dict]) -> str:
    if not changed:
        return f"no layer got cheaper ({len(layers)} examined): model unchanged"
    before = sum(layer["macs_before"] for layer in changed)
    after = sum(layer["macs_after"] for layer in changed)
    return (f"factorized {len(changed)} of {len(layers)} layers: their MACs "
            f"{before / 1e6:.2f} M -> {after / 1e6:.2f} M")
