"""export: torch module -> ONNX, checked by onnx.checker and by parity with torch."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from modelzip.plugin import Pass, PassConfig


class ExportConfig(PassConfig):
    opset: int = Field(
        18, ge=17, le=23,
        description="ONNX opset; 18 is the dynamo exporter's native one (17 is converted down)")
    exporter: Literal["dynamo", "torchscript"] = Field(
        "dynamo", description="torch.export-based exporter, or the legacy TorchScript one")
    dynamic_batch: bool = Field(True, description="make the batch axis dynamic")
    parity_samples: int = Field(64, ge=1, le=4096, description="real images compared torch vs ORT")
    # At most 1: logits differ by more than that only when the export is wrong.
    parity_atol: float = Field(1e-4, gt=0, le=1, description="absolute tolerance on logits")
    parity_rtol: float = Field(1e-3, ge=0, le=1, description="relative tolerance on logits")

    @model_validator(mode="after")
    def _dynamo_opset(self) -> ExportConfig:
        if self.exporter == "torchscript" and self.opset > 20:
            raise ValueError("the torchscript exporter supports opset <= 20; use exporter: dynamo")
        return self


class ExportPass(Pass):
    name = "export"
    summary = "Export the torch model to ONNX, check it, and verify parity in onnxruntime"
    Config = ExportConfig
    # An ONNX input (e.g. after `quantize`, which materializes ONNX itself) is checked and
    # passed through, so `prune -> finetune -> quantize -> export` reads as users expect.
    consumes = ("torch", "onnx")
    produces = "onnx"

    def run(self, artifact, config: ExportConfig, ctx):
        from modelzip.onnx_export import check_onnx

        if artifact.kind == "onnx":
            check_onnx(artifact.path, pass_name=self.name, step=ctx.step)
            ctx.record(passthrough=True, summary="already ONNX: checked and kept as is")
            return artifact

        path = ctx.work_dir / "model.onnx"
        parity = export_checked(artifact, path, config, ctx, pass_name=self.name)
        ctx.record(opset=config.opset, exporter=config.exporter, parity=parity,
                   summary=f"opset {config.opset}, parity max |diff| {parity['max_abs_diff']:.1e}")
        return artifact.evolve(kind="onnx", path=path, module=None)


def export_checked(artifact, path, config: ExportConfig, ctx, *, pass_name: str) -> dict:
    """Export ``artifact``'s module to ``path`` as ``config`` says, check it with onnx.checker and
    by parity with torch on real images; the parity record. (Also quantize's export of a torch input.)"""
    from modelzip.onnx_export import check_parity, export_onnx

    tasks = ctx.recipe.model.tasks  # a multi-task model: one named output per task
    export_onnx(artifact.module, artifact.input_shape, path, opset=config.opset, exporter=config.exporter,
                dynamic_batch=config.dynamic_batch, pass_name=pass_name, step=ctx.step, tasks=tasks)
    sample = _parity_inputs(ctx, artifact.input_shape, config)
    return check_parity(artifact.module, path, sample, atol=config.parity_atol, rtol=config.parity_rtol,
                        pass_name=pass_name, step=ctx.step, tasks=tasks)


def _parity_inputs(ctx, input_shape, config: ExportConfig):
    """Real images when the recipe has data (random ones can hide saturation issues)."""
    import torch

    data = ctx.data
    subset = data.calibration(config.parity_samples, seed=ctx.seed)
    batch = next(iter(data.loader(subset, config.parity_samples)), None)
    if batch is None:  # no training data: fall back to a seeded random batch
        generator = torch.Generator().manual_seed(ctx.seed)
        return torch.randn((config.parity_samples, *input_shape[1:]), generator=generator)
    images = batch[0]
    if not config.dynamic_batch:
        images = images[: input_shape[0]]
    return images
