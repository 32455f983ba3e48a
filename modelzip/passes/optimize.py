"""optimize: ONNX -> a leaner ONNX file that computes the same outputs.

Short names, no unused opset domains, constants folded, identical initializers stored once,
no doc strings or debug metadata; the old -> new name map is written beside the file. The
result is checked with onnx.checker and, in onnxruntime, against its input on a seeded random
batch. The pipeline runs it last, implicitly, unless the recipe ends with it or says
`optimize: false` (README, "Recipe format").
"""
from __future__ import annotations

from pydantic import Field

from modelzip.plugin import Pass, PassConfig


class OptimizeConfig(PassConfig):
    shorten_names: bool = Field(
        True, description="give every tensor and node but the graph's inputs and outputs a short name "
                          "(a, b, ..., a0, ...); the old -> new map is written beside the file")
    remove_unused_domains: bool = Field(
        True, description="drop opset imports of domains no node uses (quantizers declare "
                          "ai.onnx.training, org.pytorch.aten, ..., which some converters refuse)")
    fold_constants: bool = Field(
        True, description="Constant nodes become initializers, and nodes whose inputs are all constant "
                          "are computed once (never DequantizeLinear, nor a node whose result is larger)")
    dedupe_initializers: bool = Field(
        True, description="store identical initializers (type, shape and bytes) once")
    strip: bool = Field(
        True, description="drop doc strings, intermediate shape annotations (value_info), exporter "
                          "debug metadata, attributes equal to their defaults and all-zero int32 zero "
                          "points; the model's own metadata_props stay")
    derive_bias_scales: bool = Field(
        True, description="a QDQ layer's int32 bias scale, which is its input scale x weight scale, is "
                          "computed from those (a Mul onnxruntime folds at load, before fusing the int8 "
                          "layer) instead of stored: only where the stored value is that product exactly")
    parity_samples: int = Field(
        8, ge=1, le=256, description="random inputs (seeded) both models run on in onnxruntime")
    # Renaming, stripping and sharing change no arithmetic (max |diff| is 0.0); folding computes
    # a constant in numpy that the runtime would have computed, which may differ in the last bit.
    parity_rtol: float = Field(
        1e-6, ge=0, le=1,
        description="largest allowed |optimized - input| output difference, relative to the largest "
                    "|output|; a larger one fails the step")


class OptimizePass(Pass):
    name = "optimize"
    summary = "Lean ONNX file: short names, unused domains removed, constants folded; outputs checked unchanged"
    Config = OptimizeConfig
    consumes = ("onnx",)
    produces = "onnx"
    reads = frozenset()  # seeded random inputs: no data
    version = "2"  # "2": int32 bias scales computed from their layer's scales (derive_bias_scales)

    def run(self, artifact, config: OptimizeConfig, ctx):
        from modelzip.errors import PassError
        from modelzip.onnx_optimize import OptimizeFailure, OptimizeSettings
        from modelzip.onnx_optimize.run import optimize_onnx

        settings = OptimizeSettings(
            shorten_names=config.shorten_names, remove_unused_domains=config.remove_unused_domains,
            fold_constants=config.fold_constants, dedupe_initializers=config.dedupe_initializers,
            strip=config.strip, derive_bias_scales=config.derive_bias_scales,
            parity_samples=config.parity_samples, parity_rtol=config.parity_rtol,
            seed=ctx.seed)
        try:
            result = optimize_onnx(artifact.path, ctx.work_dir, settings)
        except OptimizeFailure as failure:
            step = ctx.step if ctx.step >= 0 else None  # -1: the baseline's optimization
            raise PassError(failure.what, pass_name=self.name, step=step, **failure.fields()) from failure
        ctx.log(result.summary)
        ctx.record(**result.to_json())
        return artifact.evolve(kind="onnx", path=result.path, module=None)
