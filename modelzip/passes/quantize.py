"""quantize: torch or ONNX -> an int8 (or int4-weight) ONNX model that onnxruntime runs.

The pass always produces ONNX: a torch input is first exported (dynamo, opset 18, dynamic
batch) and the float ONNX is then quantized with onnxruntime's tools. The result is checked
with onnx.checker, loaded in an onnxruntime CPU session, and timed against the float model
it came from; the report says which layers run quantized and whether int8 is really faster.

Quantization-aware training (`mode: qat`, torch input only) fine-tunes the model with fake
quantization first (the shared training loop), then quantizes statically with the learned
activation ranges (modelzip/quantization/qat.py).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from modelzip.passes._distill import DistillConfig, teacher_files
from modelzip.plugin import GIVEN, Pass, PassConfig

Mode = Literal["static", "dynamic", "weight_only", "qat"]
Weights = Literal["int8", "int4", "int2", "ternary", "binary", "auto"]
LOW_BIT = ("int4", "int2", "ternary", "binary", "auto")

# Which parameters mean something in which mode (and method); one written under another
# choice would be silently ignored, so validation refuses it (PassConfig.applies_to).
_MODES_OF = {
    "calibration_samples": ("static", "qat"),
    "calibration_batch_size": ("static", "qat"),
    "method": ("static",),
    "percentile": ("static",),
    "activations": ("static", "qat"),
    "per_channel": ("static", "dynamic"),
    "reduce_range": ("static", "dynamic", "qat"),
    "placement": ("static", "qat"),
    "bits": ("weight_only",),
    "block_size": ("weight_only",),
    "compute": ("weight_only",),
    "epochs": ("qat",),
    "lr": ("qat",),
    "batch_size": ("qat",),
    "distill": ("qat",),
    "int8_layers": ("qat",),
}
_APPLIES_TO = {name: {"mode": modes} for name, modes in _MODES_OF.items()}
# qat parameters of the int8 QDQ graph only (calibrated activation ranges and their placement);
# max_accuracy_drop is also weights: auto's accuracy budget.
_INT8_QAT_ONLY = ("calibration_samples", "calibration_batch_size", "reduce_range", "placement",
                  "max_accuracy_drop", "prefer")
_APPLIES_TO["percentile"] = {"mode": ("static",), "method": ("percentile",)}
_APPLIES_TO["max_float_layers"] = {"max_accuracy_drop": GIVEN}  # it bounds the accuracy search
_APPLIES_TO["target_size"] = {"weights": ("auto",)}


class QuantizeConfig(PassConfig):
    applies_to = _APPLIES_TO
    mode: Mode = Field(
        "static",
        description="static: int8 weights and activations, calibrated (CNNs); dynamic: int8 weights, "
                    "activations quantized at run time (Linear/LSTM-heavy models); weight_only: "
                    "4- or 8-bit blockwise MatMul/Gemm weights (MatMulNBits); qat (torch input): "
                    "fine-tune with fake quantization, then static int8 with the learned "
                    "activation ranges, or (weights: int4/int2/ternary/binary) a low-bit weight file")
    # ---- static
    calibration_samples: int = Field(
        512, ge=1, le=100_000,
        description="static/qat: training images (seeded subset) used to calibrate activation ranges "
                    "(qat: only the tensors without a learned range)")
    calibration_batch_size: int = Field(
        64, ge=1, le=4096,
        description="static/qat: images per calibration batch; memory holds one batch of activations")
    method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="static: how activation ranges are chosen from calibration data")
    percentile: float = Field(
        99.999, gt=90, lt=100, description="static, method percentile: share of values kept in range")
    activations: Literal["asymmetric", "symmetric", "float"] = Field(
        "asymmetric",
        description="static: asymmetric = uint8 with a zero point (uses all 256 levels for ReLU "
                    "outputs); symmetric = int8 centred on 0 (for targets that require it); qat: "
                    "asymmetric (int8 weights); with sub-8-bit weights float (weight-only, their default), "
                    "asymmetric or symmetric (each quantized layer's input fake-quantized to int8 in training "
                    "and quantized in the file with the trained range)")
    per_channel: bool = Field(True, description="static/dynamic: one weight scale per output channel")
    reduce_range: bool | None = Field(
        None,
        description="static/dynamic/qat: 7-bit weights; null = decide from the CPU (on for x86-64 "
                    "without VNNI, where onnxruntime's U8S8 kernels can saturate)")
    placement: Literal["auto", "none"] = Field(
        "auto",
        description="static/qat: auto = arrange the graph for onnxruntime's int8 kernels on this CPU (x86: a "
                    "convolution reading fewer than 4 channels, e.g. a grayscale stem, gets its input "
                    "zero-padded to 4, the channel group the int8 kernels read; a 4-D tensor flattened into a "
                    "Linear is flattened channels last, as the int8 graph runs; the same outputs, and the "
                    "report lists every change); none = quantize the graph as exported")
    # ---- weight_only
    bits: Literal[4, 8] = Field(4, description="weight_only: bits per weight")
    block_size: int = Field(
        128, ge=16, le=256, description="weight_only: weights sharing one scale (power of 2)")
    compute: Literal["int8", "float"] = Field(
        "int8",
        description="weight_only: MatMulNBits arithmetic; int8 (accuracy_level 4) is fast on CPUs, "
                    "float (accuracy_level 1) dequantizes weights to fp32 first")
    # ---- qat
    epochs: int = Field(
        1, ge=1, le=1000, description="qat: passes over the training split with fake quantization")
    lr: float = Field(
        0.001, gt=0, le=1,
        description="qat: peak learning rate (sgd, cosine); small, since the model is already trained")
    batch_size: int | None = Field(
        None, ge=1, le=65536, description="qat: training batch (default data.batch_size)")
    distill: DistillConfig | None = Field(
        None, description="qat: knowledge distillation as in finetune, e.g. {teacher: input, alpha: 0.5}; "
                          "null: train on the labels")
    # ---- qat: sub-8-bit weights
    weights: Weights = Field(
        "int8",
        description="weight grid: int8 (every mode); qat only: int4 (symmetric), int2 (asymmetric), "
                    "ternary (TWN, {-a, 0, +a}), binary (XNOR, {-a, +a}), one scale per output channel; "
                    "stored as MatMulNBits / bit-packed / INT4 DequantizeLinear (README: low-bit weights); "
                    "auto: a grid per layer from measured sensitivity, within target_size or max_accuracy_drop")
    int8_layers: tuple[str, ...] | None = Field(
        None,
        description="qat with sub-8-bit weights: globs of torch module names kept at 8 bits; null = "
                    "the first and last Conv/Linear (input and logits suffer most; auto: none), [] = none")
    target_size: float | None = Field(
        None, gt=0, le=1,
        description="weights: auto: the file's budget as a fraction of the fp32 ONNX bytes (0.1 = 10x "
                    "smaller); each layer gets the grid that loses the least measured accuracy per byte")
    # ---- all modes
    exclude: tuple[str, ...] = Field(
        (), description="glob patterns of torch module names (e.g. 'classifier.4', 'features.*') "
                        "or ONNX node names to keep in float")
    max_accuracy_drop: float | None = Field(
        None, ge=0, le=1,
        description="accuracy budget on the validation split vs the float model (0.01 = 1 point); "
                    "when exceeded, the most sensitive layers are kept float one at a time; weights: auto: "
                    "the smallest grids whose measured drops (summed) stay within it, checked after training")
    max_float_layers: int = Field(
        3, ge=1, le=64, description="at most this many layers kept float by the accuracy search")
    prefer: Literal["smaller", "faster"] = Field(
        "smaller",
        description="faster: if the quantized model is slower than the float one at the data batch "
                    "size, return the float model instead (the report says so)")

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("block_size must be a power of 2 (16, 32, 64, 128 or 256)")
        return value

    @model_validator(mode="after")
    def _weights_fit_mode(self) -> QuantizeConfig:
        if self.weights in LOW_BIT and self.mode != "qat":
            raise ValueError(
                f"weights: {self.weights} needs mode: qat: rounding trained weights to {self.weights} without "
                f"training them on that grid loses most of the accuracy. Fix: mode: qat (e.g. {{mode: qat, "
                f"weights: {self.weights}, epochs: 3}})" + (", or mode: weight_only with bits: 4 for 4-bit "
                                                             "MatMul weights without training"
                                                             if self.weights == "int4" else ""))
        if self.activations == "float" and self.mode != "qat":
            raise ValueError(
                f"activations: float means weight-only quantization, but mode {self.mode} quantizes "
                "activations (static) or does not train weights. Fix: mode: weight_only (4/8-bit MatMul "
                "weights), or mode: qat with weights: int4, int2, ternary or binary")
        if self.mode == "qat" and self.activations == "symmetric" and self.weights not in LOW_BIT:
            raise ValueError("int8 QAT (weights: int8) trains asymmetric uint8 activation ranges for onnxruntime's "
                             "QDQ quantizer; symmetric int8 activations are offered with sub-8-bit weights only. "
                             "Fix: remove activations (asymmetric), activations: float for weight-only, or "
                             "weights: int4, int2, ternary or binary")
        self._auto_budget()
        self._lowbit_only_params()
        return self

    def _auto_budget(self) -> None:
        """weights: auto needs exactly one budget: a size (target_size) or an accuracy (max_accuracy_drop)."""
        if self.weights != "auto":
            return
        if self.target_size is None and self.max_accuracy_drop is None:
            raise ValueError("weights: auto chooses a grid per layer within a budget, and none is given. Fix: add "
                             "target_size (e.g. target_size: 0.1 for a file 10x smaller than fp32) or "
                             "max_accuracy_drop (e.g. 0.01: the smallest file whose measured drop stays within "
                             "1 point)")
        if self.target_size is not None and self.max_accuracy_drop is not None:
            raise ValueError("weights: auto takes one budget, but both target_size and max_accuracy_drop are "
                             "given: the smallest file within an accuracy drop, or the most accurate one within a "
                             "size, not both. Fix: remove one of them (a size budget can also be a gate: "
                             "gates.min_size_ratio)")

    def _lowbit_only_params(self) -> None:
        """Parameters of the int8 QAT graph (calibration, placement...) mean nothing to sub-8-bit weights,
        and int8_layers nothing to it."""
        if self.mode != "qat":
            return
        if self.lowbit:
            given = set(self.model_fields_set) & {*_INT8_QAT_ONLY, "max_float_layers"}
            if self.weights == "auto":
                given.discard("max_accuracy_drop")  # auto's accuracy budget
            if given:
                names = ", ".join(sorted(given))
                budget = (" (max_accuracy_drop is a budget of weights: auto only)"
                          if "max_accuracy_drop" in given else "")
                raise ValueError(
                    f"{names} apply to the int8 QAT graph only (activation calibration, placement, accuracy "
                    f"search, float fallback); weights: {self.weights} writes the low-bit file, whose activation "
                    f"ranges (if int8) are trained, not calibrated{budget}. Fix: remove {names}")
        elif "int8_layers" in self.model_fields_set:
            raise ValueError("int8_layers keeps layers at 8 bits when weights are sub-8-bit, but weights is "
                             "int8. Fix: remove int8_layers, or set weights: int4, int2, ternary or binary")

    @property
    def lowbit_activations(self) -> str:
        """The low-bit file's activations: float unless asymmetric or symmetric int8 is written."""
        return self.activations if "activations" in self.model_fields_set else "float"

    @property
    def lowbit(self) -> bool:
        """Whether qat writes the weight-only (low-bit) file rather than the int8 QDQ graph."""
        return self.mode == "qat" and (self.weights in LOW_BIT or self.activations == "float")

    @field_validator("exclude")
    @classmethod
    def _non_empty_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not pattern.strip() for pattern in value):
            raise ValueError("exclude patterns must be non-empty, e.g. 'classifier.4' or 'features.*'")
        return value


class QuantizePass(Pass):
    name = "quantize"
    summary = "Quantize to int8 (static/dynamic) or 4/8-bit weights in ONNX, checked and timed in onnxruntime"
    Config = QuantizeConfig
    consumes = ("torch", "onnx")
    produces = "onnx"
    # "2": details.latency has the pipeline's shape (timings, interval, verdict per batch), and
    # prefer: faster decides by that verdict; entries cached by version 1 lack both.
    # "3": static/qat graphs are arranged for onnxruntime's int8 kernels (placement: auto), and
    # details.nodes.as_run says what onnxruntime runs; version 2 entries are slower int8 models.
    # "4": qat exports the trained model (version 3 reused the pipeline's export of the input when
    # qat was the first pass: the untrained weights); sub-8-bit weights, 2-bit MatMulNBits in
    # blocks of 128 (entries with blocks of 256 run ~100x slower at batch 1).
    # "5": sub-8-bit weights with int8 activations (QuantizeLinear/DequantizeLinear inputs, biases
    # apart); MatMulNBits' input rounding simulated as the kernel computes it (x * 127 / max), which
    # changes what low-bit QAT trains; weights: auto takes max_accuracy_drop and verifies it. int8 and
    # float are timed only under prefer: faster (details.latency is null otherwise; the report's
    # final latency has the speedup).
    version = "5"
    quantizes = True
    # `prefer: faster` keeps whichever of int8 and float runs faster here: the CPU decides.
    reads = frozenset({"data", "timing"})

    def consumes_for(self, config: QuantizeConfig) -> tuple[str, ...]:
        return ("torch",) if config.mode == "qat" else self.consumes  # qat trains the torch model

    def reads_for(self, config: QuantizeConfig) -> frozenset[str]:
        return self.reads if config.prefer == "faster" else self.reads - {"timing"}

    def input_files(self, config: QuantizeConfig) -> list[str]:
        return teacher_files(config.distill)

    def run(self, artifact, config: QuantizeConfig, ctx):
        from modelzip.passes._quantize_run import run_quantize

        return run_quantize(artifact, config, ctx, pass_name=self.name)
