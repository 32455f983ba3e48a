"""lowrank: replace Linear and Conv2d layers by two thinner ones (truncated SVD)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

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
    round_to: int = Field(
        16, ge=1, le=65536,
        description="round each rank up to a multiple of this (capped at the full rank); onnxruntime's x86 "
                    "convolutions work on blocks of 8/16 channels and run odd widths slower; 1: no rounding")
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
    version = "2"  # 2: BatchNorm statistics recalibrated by default
    reads = frozenset({"data"})  # training images for the BatchNorm statistics (see reads_for)

    def reads_for(self, config: LowRankConfig) -> frozenset[str]:
        # Without recalibration the result is the SVD of the weights alone: no data.
        return self.reads if config.recalibrate_bn else frozenset()

    def run(self, artifact, config: LowRankConfig, ctx):
        from modelzip.lowrank.factorize import factorize_model

        module, records = factorize_model(artifact.module, lowrank_settings(config), artifact.input_shape)
        layers = [record.to_json() for record in records]
        changed = [layer for layer in layers if layer["factorized"]]
        details = {"layers": layers, "factorized": len(changed), "summary": _summary(layers, changed)}
        details = recalibrated(details, module, config.recalibrate_bn, ctx)
        ctx.record(**details)
        ctx.log(details["summary"])
        ctx.record_table("per layer", LAYER_HEADER, [_layer_row(record) for record in records])
        return artifact.evolve(module=module)


def lowrank_settings(config: LowRankConfig):
    """The config as the machinery's settings (imports torch)."""
    from modelzip.lowrank.ranks import LowRankSettings

    return LowRankSettings(energy=config.energy, rank_ratio=config.rank_ratio, conv=config.conv,
                           linear=config.linear, min_rank=config.min_rank, round_to=config.round_to,
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
