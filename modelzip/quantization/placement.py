"""Graph changes that put int8 layers on onnxruntime's fast x86 kernels, made before calibration.

onnxruntime runs a QDQ convolution as QLinearConv in NHWC (channels last) on MLAS's int8
kernels, converting layout with Transposes at the edges of the int8 region. Profiled per node
at batch 256 with 2 threads (AMD EPYC, AVX-512 VNNI, onnxruntime 1.32; BENCHMARKS.md "Where int8
time goes"), two things cost the fashion CNN's int8 graph 25% of its time. Both are fixed here
without changing the predictions (on the 10,000 Fashion-MNIST test images the padding left every
logit bit-identical, the flatten moved a few by one output quantization step, no top-1 changed):

- The stem reads 1 channel. The int8 kernels read input channels four at a time (one 32-bit
  lane of a VNNI dot product holds four int8 values); with one, the stem was the slowest int8
  node of every zoo model: 3.6 ms on the CNN, more than its next convolution with 16x the MACs
  (2.4 ms) and 5x the fp32 stem, 9.8 of dsresnet's 48 ms. Its input is padded to 4 channels
  with zeros (its weights too), which halves that node. A 1-channel NCHW tensor is already NHWC
  in memory, so the padding is done channels last -- Reshape to NHWC, a MatMul with a one-hot
  row, Transpose to NCHW -- and onnxruntime cancels that Transpose against the one it puts in
  front of the NHWC QLinearConv: no layout change at run time. (A Pad in NCHW left a 0.36 ms
  Transpose of the 4-channel tensor; a Pad or a broadcast Mul on the innermost axis took 1-3 ms;
  the MatMul 0.15 ms.) Wider narrow inputs (2-3 channels, e.g. RGB) get an NCHW Pad.
- The head flattens NCHW. Flatten -> Linear needs the channels-first order, so onnxruntime
  transposed the pooled int8 tensor back from NHWC (0.45 ms). A Transpose to NHWC is put before
  the flatten and the Linear's weight columns are permuted to match: the two transposes cancel.

Keeping the stem in fp32 instead measured no faster: it needs the Relu moved behind the MaxPool
(onnxruntime moves a QuantizeLinear up through a MaxPool, leaving a slow uint8 NCHW pool), and
where the stem's output also feeds a residual Add, onnxruntime then ran every residual Add in
NCHW between Transposes.

The nodes added for the padding stay float (they change the float input, quantized once after
them). Only on x86-64 with AVX2/AVX-512, where this was measured; other CPUs get the graph as is.
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
    channels: int  # input channels before padding
    added: tuple[str, ...]  # the nodes put in front of it (kept float)
    channels_last: bool  # padded in NHWC (no layout Transpose at run time) or with an NCHW Pad

    def to_json(self) -> dict[str, Any]:
        return {"node": self.conv, "input_channels": self.channels, "padded_to": LANE_CHANNELS,
                "how": "channels last (Reshape, one-hot MatMul, Transpose)" if self.channels_last else "Pad",
                "added_nodes": list(self.added)}


@dataclass(frozen=True)
class Flattened:
    """A flatten whose input is transposed to NHWC first, with the next layer's weight permuted."""

    flatten: str  # the Flatten/Reshape node
    layer: str  # the Gemm/MatMul reading it, whose weight was permuted
    transpose: str  # the Transpose put in front of the flatten

    def to_json(self) -> dict[str, Any]:
        return {"node": self.flatten, "layer": self.layer, "added_node": self.transpose}


@dataclass(frozen=True)
class Placement:
    """What was changed and why, for the report; ``float_nodes`` must stay out of int8."""

    padded: tuple[Padded, ...] = ()
    flattened: tuple[Flattened, ...] = ()
    reason: str = ""

    @property
    def float_nodes(self) -> dict[str, str]:
        """node -> why it stays float."""
        return {node: f"placement: pads {p.conv}'s input to {LANE_CHANNELS} channels in float"
                for p in self.padded for node in p.added}

    def to_json(self) -> dict[str, Any]:
        return {"padded_inputs": [p.to_json() for p in self.padded],
                "nhwc_flatten": [f.to_json() for f in self.flattened], "reason": self.reason}


def arrange(path: Path, *, enabled: bool, flags: list[str]) -> Placement:
    """Rewrite the float ONNX model at ``path`` in place for onnxruntime's x86 int8 kernels."""
    import onnx

    if not enabled:
        return Placement(reason="placement: none (set in the recipe)")
    if not applies(flags):
        return Placement(reason="no change: onnxruntime's int8 kernels on this CPU (no AVX2/AVX-512) were not "
                                "measured")
    model = onnx.load(str(path))
    padded = tuple(_pad_narrow_inputs(model))
    flattened = tuple(_flatten_channels_last(model))
    if not (padded or flattened):
        return Placement(reason=f"nothing to change: no convolution reads fewer than {LANE_CHANNELS} channels and "
                                "no 4-D tensor is flattened into a Linear")
    onnx.save(model, str(path))
    reasons = []
    if padded:
        reasons.append(f"onnxruntime's x86 int8 convolution reads input channels {LANE_CHANNELS} at a time (one "
                       f"lane of an int8 dot product) and ran slower than fp32 with fewer, so such inputs are "
                       f"zero-padded to {LANE_CHANNELS} channels (zero weights: the same result)")
    if flattened:
        reasons.append("onnxruntime runs int8 convolutions and pools channels last (NHWC): flattening in that "
                       "order, with the Linear's weight columns permuted to match, saves it a Transpose back")
    return Placement(padded, flattened, "; ".join(reasons))


def applies(flags: list[str]) -> bool:
    """Whether ``arrange`` changes anything on a CPU with these flags (x86-64 with AVX2/AVX-512)."""
    return any(flag in flags for flag in _X86_INT8_FLAGS)


class _Graph:
    """Lookups over an ONNX graph that the rewrites below share."""

    def __init__(self, model) -> None:
        graph = model.graph
        self.graph = graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.readers: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                self.readers[name] = self.readers.get(name, 0) + 1
        self.outputs = {output.name for output in graph.output}
        self.shapes = {info.name: [d.dim_value if d.HasField("dim_value") else None
                                   for d in info.type.tensor_type.shape.dim]
                       for info in (*graph.input, *graph.value_info)}
        self.taken = {node.name for node in graph.node} | {name for node in graph.node for name in node.output}
        self.taken |= set(self.initializers)

    def fresh(self, name: str) -> str:
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name

    def constant(self, values, name: str) -> str:
        from onnx import numpy_helper

        name = self.fresh(name)
        self.graph.initializer.append(numpy_helper.from_array(values, name))
        return name

    def own_float_weight(self, name: str):
        """The float initializer ``name`` if only one node reads it (safe to rewrite), else None."""
        from onnx import TensorProto

        init = self.initializers.get(name)
        if init is None or init.data_type != TensorProto.FLOAT or self.readers.get(name) != 1:
            return None
        return init

    def replace_nodes(self, nodes) -> None:
        self.graph.ClearField("node")
        self.graph.node.extend(nodes)


def _pad_narrow_inputs(model) -> list[Padded]:
    """Zero-pad the input (and weights) of every ungrouped 2-D Conv reading 1-3 channels."""
    import numpy as np
    from onnx import numpy_helper

    graph = _Graph(model)
    nodes, padded = [], []
    for node in model.graph.node:
        weight = graph.own_float_weight(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if weight is None or len(weight.dims) != 4 or group != 1 or weight.dims[1] >= LANE_CHANNELS:
            nodes.append(node)
            continue
        values = numpy_helper.to_array(weight)
        channels = values.shape[1]
        wide = np.zeros((values.shape[0], LANE_CHANNELS, *values.shape[2:]), dtype=values.dtype)
        wide[:, :channels] = values
        weight.CopyFrom(numpy_helper.from_array(wide, weight.name))  # read by this Conv only
        shape = graph.shapes.get(node.input[0], [])
        if channels == 1 and len(shape) == 4 and None not in shape[2:]:
            added = _pad_channels_last(graph, node, shape[2], shape[3])
        else:
            added = _pad_channels_first(graph, node, channels)
        nodes += [*added, node]
        padded.append(Padded(node.name, channels, tuple(n.name for n in added), len(added) == 3))
    if padded:
        graph.replace_nodes(nodes)
    return padded


def _pad_channels_last(graph: _Graph, conv, height: int, width: int) -> list:
    """(N, 1, H, W) -> Reshape (N, H, W, 1): the same memory -> MatMul [[1, 0, 0, 0]] (N, H, W, 4)
    -> Transpose (N, 4, H, W), the input of ``conv`` (rewired here). onnxruntime cancels this
    Transpose against the one it puts in front of the NHWC QLinearConv."""
    import numpy as np
    from onnx import helper

    source = conv.input[0]
    shape = graph.constant(np.array([0, height, width, 1], np.int64), f"{conv.name}_nhwc_shape")
    one_hot = graph.constant(np.eye(1, LANE_CHANNELS, dtype=np.float32), f"{conv.name}_channel_pad")
    as_nhwc, padded, back = (graph.fresh(f"{source}_{suffix}") for suffix in ("nhwc", "nhwc_padded", "padded"))
    nodes = [
        helper.make_node("Reshape", [source, shape], [as_nhwc], name=graph.fresh(f"{conv.name}_as_nhwc")),
        helper.make_node("MatMul", [as_nhwc, one_hot], [padded], name=graph.fresh(f"{conv.name}_pad_channels")),
        helper.make_node("Transpose", [padded], [back], name=graph.fresh(f"{conv.name}_to_nchw"), perm=[0, 3, 1, 2]),
    ]
    conv.input[0] = back
    return nodes


def _pad_channels_first(graph: _Graph, conv, channels: int) -> list:
    """An NCHW Pad of the input of ``conv`` (rewired here) with LANE_CHANNELS - ``channels`` zero channels."""
    import numpy as np
    from onnx import helper

    source = conv.input[0]
    amounts = graph.constant(np.array([0, 0, 0, 0, 0, LANE_CHANNELS - channels, 0, 0], np.int64),
                             f"{conv.name}_channel_pads")
    padded = graph.fresh(f"{source}_padded")
    conv.input[0] = padded
    return [helper.make_node("Pad", [source, amounts], [padded], name=graph.fresh(f"{conv.name}_pad_channels"),
                             mode="constant")]


def _flatten_channels_last(model) -> list[Flattened]:
    """Flatten(axis 1) or Reshape to (N, C*H*W) of a static (N, C, H, W) tensor, read only by a Gemm
    (transA 0) or MatMul with its own constant weight: flatten in NHWC order, permute the weight."""
    from onnx import helper

    graph = _Graph(model)
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    nodes, done = [], []
    for node in model.graph.node:
        layer = _flattened_into(graph, node, readers)
        if layer is None:
            nodes.append(node)
            continue
        _, channels, height, width = graph.shapes[node.input[0]]
        _permute_columns(graph, layer, channels, height, width)
        source = node.input[0]
        nhwc = graph.fresh(f"{source}_nhwc")
        transpose = helper.make_node("Transpose", [source], [nhwc], name=graph.fresh(f"{node.name}_nhwc"),
                                     perm=[0, 2, 3, 1])
        node.input[0] = nhwc
        nodes += [transpose, node]
        done.append(Flattened(node.name, layer.name, transpose.name))
    if done:
        graph.replace_nodes(nodes)
    return done


def _flattened_into(graph: _Graph, node, readers):
    """The Gemm/MatMul that ``node`` flattens a static 4-D tensor into (see above), else None."""
    from onnx import helper, numpy_helper

    shape = graph.shapes.get(node.input[0]) if node.input else None
    if (node.op_type not in ("Flatten", "Reshape") or not shape or len(shape) != 4 or None in shape[1:]
            or shape[2] * shape[3] == 1):  # 1x1 maps (after global pooling) are in NHWC order already
        return None
    features = shape[1] * shape[2] * shape[3]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Flatten" and attrs.get("axis", 1) != 1:
        return None
    if node.op_type == "Reshape":
        target = graph.initializers.get(node.input[1])
        dims = numpy_helper.to_array(target).tolist() if target is not None else None
        if dims not in ([-1, features], [0, features], [0, -1]) or (dims[0] == 0 and attrs.get("allowzero")):
            return None
    layers = readers.get(node.output[0], [])
    if len(layers) != 1 or node.output[0] in graph.outputs:
        return None
    layer = layers[0]
    layer_attrs = {a.name: helper.get_attribute_value(a) for a in layer.attribute}
    plain = layer.op_type == "MatMul" or (layer.op_type == "Gemm" and not layer_attrs.get("transA", 0))
    weight = graph.own_float_weight(layer.input[1]) if plain and layer.input[0] == node.output[0] else None
    in_axis = 1 if layer_attrs.get("transB", 0) else 0  # the weight's input-feature axis
    return layer if weight is not None and len(weight.dims) == 2 and weight.dims[in_axis] == features else None


def _permute_columns(graph: _Graph, layer, channels: int, height: int, width: int) -> None:
    """Reorder the input-feature axis of ``layer``'s weight from (C, H, W) to (H, W, C) order."""
    import numpy as np
    from onnx import helper, numpy_helper

    weight = graph.initializers[layer.input[1]]
    values = numpy_helper.to_array(weight)
    trans_b = layer.op_type == "Gemm" and any(a.name == "transB" and helper.get_attribute_value(a)
                                              for a in layer.attribute)
    rows = values if trans_b else values.T  # (out features, in features)
    rows = rows.reshape(rows.shape[0], channels, height, width).transpose(0, 2, 3, 1).reshape(rows.shape[0], -1)
    weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(rows if trans_b else rows.T), weight.name))
