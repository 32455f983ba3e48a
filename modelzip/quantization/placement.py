"""Graph changes that put int8 layers on onnxruntime's fast x86 kernels, made before calibration.

onnxruntime runs a QDQ convolution as QLinearConv in NHWC on MLAS's int8 kernels, which read
input channels four at a time: one 32-bit lane of a VNNI dot product (VPDPBUSD) or of its
AVX2 stand-in holds four int8 values. A convolution reading fewer than 4 channels -- the
stem of a grayscale (1) or RGB (3) image model -- falls off that path. Profiled per node at
batch 256 with 2 threads (AMD EPYC, AVX-512 VNNI, onnxruntime 1.32; BENCHMARKS.md "Where
int8 time goes"), the 1-channel stem was the slowest int8 node of each zoo model: 3.6 ms on
the fashion CNN, more than its next convolution with 16x the MACs (2.4 ms) and 5x the fp32
stem (0.7 ms); 9.8 of dsresnet's 48 ms (fp32 stem: 1.5 ms). Zero-padding its input to 4
channels, and its weights with zeros, gives bit-identical logits and halves that node
(single-threaded, interleaved: 5.7 -> 3.3 ms on the CNN, 13.9 -> 7.1 ms on dsresnet); the
CNN's int8 speed-up over fp32 rose from 1.63x to 2.10x (median of 6 interleaved measurements).

Keeping the stem in fp32 instead measured no faster (2.00x): it needs the Relu moved behind
the MaxPool (onnxruntime moves a QuantizeLinear up through a MaxPool, leaving a slow uint8
NCHW pool), and where the stem's output also feeds a residual Add, onnxruntime then ran every
residual Add in NCHW between Transposes. Padding works for every layout.

The Pad stays float (it pads the float input, which is then quantized once): quantized, the
QDQ quantizer wraps it in Q/DQ that onnxruntime does not fuse, two conversions more.
Only on x86-64 with AVX2/AVX-512, where this was measured; other CPUs get the graph as is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

LANE_CHANNELS = 4  # int8 values in one 32-bit lane of an x86 int8 dot product
_X86_INT8_FLAGS = ("avx2", "avx512f")


@dataclass(frozen=True)
class Padded:
    """One convolution whose input was zero-padded to LANE_CHANNELS channels."""

    conv: str  # the Conv node (quantized as before)
    pad: str  # the Pad node added in front of it (kept float)
    channels: int  # input channels before padding

    def to_json(self) -> dict[str, Any]:
        return {"node": self.conv, "pad_node": self.pad, "input_channels": self.channels,
                "padded_to": LANE_CHANNELS}


@dataclass(frozen=True)
class Placement:
    """What was changed and why, for the report; ``float_nodes`` must stay out of int8."""

    padded: tuple[Padded, ...]
    reason: str

    @property
    def float_nodes(self) -> dict[str, str]:
        return {p.pad: f"pads {p.conv}'s input to {LANE_CHANNELS} channels in float (placement)"
                for p in self.padded}

    def to_json(self) -> dict[str, Any]:
        return {"padded_inputs": [p.to_json() for p in self.padded], "reason": self.reason}


def arrange(path: Path, *, enabled: bool, flags: list[str]) -> Placement:
    """Rewrite the float ONNX model at ``path`` in place for onnxruntime's x86 int8 kernels."""
    import onnx

    if not enabled:
        return Placement((), "placement: none (set in the recipe)")
    if not applies(flags):
        return Placement((), "no change: onnxruntime's int8 kernels on this CPU (no AVX2/AVX-512) were not "
                             "measured")
    model = onnx.load(str(path))
    padded = tuple(_pad_narrow_inputs(model))
    if padded:
        onnx.save(model, str(path))
    return Placement(padded, (
        f"onnxruntime's x86 int8 convolution reads input channels {LANE_CHANNELS} at a time (one lane of an "
        f"int8 dot product); with fewer it ran slower than fp32, so such inputs are zero-padded to "
        f"{LANE_CHANNELS} channels (zero weights: the same result)") if padded else
        f"no convolution reads fewer than {LANE_CHANNELS} channels")


def applies(flags: list[str]) -> bool:
    """Whether ``arrange`` changes anything on a CPU with these flags (x86-64 with AVX2/AVX-512)."""
    return any(flag in flags for flag in _X86_INT8_FLAGS)


def _pad_narrow_inputs(model) -> list[Padded]:
    """Zero-pad the input (and weights) of every ungrouped Conv reading 1-3 channels."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    taken = {node.name for node in graph.node} | {name for node in graph.node for name in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    nodes, padded = [], []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if (weight is None or weight.data_type != TensorProto.FLOAT or len(weight.dims) != 4 or group != 1
                or weight.dims[1] >= LANE_CHANNELS or readers[weight.name] != 1):
            nodes.append(node)
            continue
        values = numpy_helper.to_array(weight)
        channels = values.shape[1]
        wide = np.zeros((values.shape[0], LANE_CHANNELS, *values.shape[2:]), dtype=values.dtype)
        wide[:, :channels] = values
        weight.CopyFrom(numpy_helper.from_array(wide, weight.name))  # read by this Conv only
        pad_name = _fresh(f"{node.name}_pad_channels", taken)
        amounts = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, LANE_CHANNELS - channels, 0, 0], np.int64),
                                          _fresh(f"{pad_name}_amounts", taken))
        graph.initializer.append(amounts)
        output = _fresh(f"{node.input[0]}_padded", taken)
        nodes.append(helper.make_node("Pad", [node.input[0], amounts.name], [output], name=pad_name,
                                      mode="constant"))
        node.input[0] = output
        nodes.append(node)
        padded.append(Padded(node.name, pad_name, channels))
    if padded:
        graph.ClearField("node")
        graph.node.extend(nodes)
    return padded


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name
