"""Sub-8-bit weights in ONNX: the trained codes written in formats a default onnxruntime session runs.

The float ONNX exported from the baked model (lowbit.py) already holds the low-bit weights
as floats; each layer's weight initializer is replaced by the same values stored small:

- Linear (Gemm/MatMul) at 4 or 2 bits (int4, int2, ternary): onnxruntime's ``MatMulNBits``
  (com.microsoft), which computes from packed codes (accuracy_level 4: int8 arithmetic; level 1
  measured 10-40x slower). Blocks of 256 rows at 4 bits, 128 at 2 bits (lowbit.MATMUL_NBITS_BLOCK:
  where onnxruntime's int8 kernels run): one fp32 scale per block costs 0.125 or 0.25 bit per
  weight; every block of a column repeats that column's trained scale, so the kernel computes
  the trained grid exactly.
- Linear with binary weights: no runtime kernel reads 1-bit codes, so the signs are stored
  bit-packed (uint8, 8 per byte) and unpacked in the graph with standard ops (BitShift,
  BitwiseAnd, Cast, then ``2b - 1`` times the scale). onnxruntime folds that constant subgraph
  at session load: the file is small, the weights in memory are fp32.
- Everything else (convolutions; 8-bit layers): ``DequantizeLinear`` from INT4 (values within
  [-8, 7]: int4, int2, ternary, binary) or INT8 initializers, per output channel (opset 21,
  exact in onnxruntime). INT2 initializers (opset 25) would be smaller, but onnxruntime 1.32's
  QDQ fusion computes them wrongly in a default session, so the file does not use them.

- int8 activations (Codes.activation): a QuantizeLinear/DequantizeLinear pair with the trained
  (scale, zero point) on the layer's data input, before the layer's own node (MatMulNBits takes
  the dequantized float input and rounds it again inside, as the reference simulates). Measured
  with onnxruntime 1.32: it does not fuse an INT4-weight DequantizeLinear into QLinearConv (only
  INT8 weights with a quantized output too), so the convolution runs in float on exactly the
  int8 grid's values: exact, not faster. Such a layer's bias is added by its own Add: with a
  DequantizeLinear input and a bias initializer, onnxruntime 1.32 (WeightBiasQuantization, in a
  default session) rounds the bias to int32 at scale input x weight scale, which the trained
  model does not do (measured: 1-2% of argmaxes flipped on a noisy tiny model); apart, it is exact.

The file's per-channel scale is solved from the exported weight (an exporter folds a following
BatchNorm into the conv, which rescales each output channel) and the reconstruction is
checked: a weight that is not ``values * scale`` per channel is a QuantizeFailure.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelzip.quantization import QuantizeFailure
from modelzip.quantization.lowbit import IDEAL_BITS, MATMUL_NBITS_BLOCK, Codes

OPSET = 21  # DequantizeLinear with INT4 initializers
ACCURACY_LEVEL = 4
MATMUL_OPS = ("Gemm", "MatMul")
_RECONSTRUCTION_RTOL = 1e-5  # the exported weight vs values * solved scale, relative to max|w|


@dataclass(frozen=True)
class LayerRow:
    """One layer of the report's low-bit table."""

    layer: str
    node: str
    op_type: str
    grid: str
    bits: int
    format: str
    weights: int  # number of weights
    bytes: int  # initializer bytes written for this layer (values, scales, zero points)
    ideal_bytes: int  # the same weights at IDEAL_BITS plus one fp32 scale per output channel
    scale: dict[str, float]  # min/median/max of the per-channel scales in the file
    activation: dict[str, Any] | None = None  # the input's int8 grid (InputRange.to_json); None: float

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "bits_per_weight": round(8 * self.bytes / max(self.weights, 1), 3)}


def rewrite(source: Path, out: Path, codes: dict[str, Codes], layers) -> list[LayerRow]:
    """Write ``source`` with each layer in ``codes`` stored small to ``out``; one row per layer.

    ``layers``: layers.find_layers(...) of ``source`` (their label is the torch module name).
    """
    import onnx

    model = onnx.load(str(source))
    initializers = {init.name: init for init in model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    rows, used = [], False
    for layer in layers:
        name = next((alias for alias in (layer.label, *layer.aliases) if alias in codes), None)
        if name is None:
            continue
        node = nodes[layer.node]
        weight_name = _weight_input(node, initializers, layer.label)
        if codes[name].activation is not None:
            _quantize_input(model, node, codes[name].activation)
            _bias_apart(model, node, initializers)
        row, contrib = _rewrite_layer(model, node, initializers, weight_name, codes[name], name)
        rows.append(row)
        used = used or contrib
    missing = sorted(set(codes) - {row.layer for row in rows})
    if missing:
        raise QuantizeFailure(f"the exported graph has no layer for the trained module(s) {missing}",
                              expected="one Conv/Gemm/MatMul node per quantized torch layer",
                              fix="exclude these layers (exclude: [...]) or report the model")
    _set_opsets(model, contrib=used)
    _drop_unused_initializers(model)
    onnx.save(model, str(out))
    return rows


def _weight_input(node, initializers, label: str) -> str:
    index = 1  # Conv, Gemm, MatMul: the weight is the second input
    if len(node.input) <= index or node.input[index] not in initializers:
        raise QuantizeFailure(f"layer {label} ({node.op_type} {node.name}) has no constant weight to store",
                              got=f"inputs {list(node.input)}", expected="an initializer as input 1",
                              fix=f"exclude: ['{label}']")
    return node.input[index]


def _rewrite_layer(model, node, initializers, weight_name: str, codes: Codes, label: str):
    """(the report row, whether a com.microsoft op was added)."""
    from onnx import numpy_helper

    exported = numpy_helper.to_array(initializers[weight_name]).astype(np.float32)
    transposed = _transposed(node, exported.shape, codes.values.shape)
    weight = exported.T if transposed else exported  # torch layout: [out, in, ...]
    scale = _solve_scale(weight, codes, label)
    stats = {"min": float(scale.min()), "median": float(np.median(scale)), "max": float(scale.max())}
    common = dict(layer=label, node=node.name, op_type=node.op_type, grid=codes.grid, bits=codes.bits,
                  weights=int(codes.values.size), scale=stats,
                  activation=None if codes.activation is None else codes.activation.to_json(),
                  ideal_bytes=int(np.ceil(IDEAL_BITS[codes.grid] * codes.values.size / 8)) + 4 * scale.size)
    if node.op_type in MATMUL_OPS and codes.bits in (2, 4) and _gemm_is_plain(node):
        added = _matmul_nbits(model, node, codes, scale)
        return LayerRow(format="MatMulNBits", bytes=added, **common), True
    if node.op_type in MATMUL_OPS and codes.grid == "binary":
        added = _bitpacked(model, node, weight_name, codes, scale, transposed)
        return LayerRow(format="bit-packed uint8, unpacked at load", bytes=added, **common), False
    added = _dequantize(model, node, weight_name, codes, scale, transposed)
    container = "INT8" if codes.bits == 8 else "INT4"
    return LayerRow(format=f"DequantizeLinear {container}", bytes=added, **common), False


def _transposed(node, exported_shape, torch_shape) -> bool:
    """Whether the ONNX weight is the torch weight transposed (a MatMul or a Gemm with transB=0)."""
    if node.op_type == "MatMul" or (node.op_type == "Gemm" and _attr(node, "transB", 0) == 0):
        return tuple(exported_shape) == tuple(reversed(torch_shape)) and len(torch_shape) == 2
    return False


def _solve_scale(weight: np.ndarray, codes: Codes, label: str) -> np.ndarray:
    """The per-channel scale with weight == values * scale (least squares), checked."""
    values = codes.values.astype(np.float32)
    if weight.shape != values.shape:
        raise QuantizeFailure(f"layer {label}: the exported weight has shape {weight.shape}, the trained "
                              f"codes {values.shape}", expected="the same weight", fix="report the model")
    flat_w, flat_v = weight.reshape(len(weight), -1), values.reshape(len(values), -1)
    norm = (flat_v * flat_v).sum(axis=1)
    scale = np.where(norm > 0, (flat_w * flat_v).sum(axis=1) / np.maximum(norm, 1), 1.0).astype(np.float32)
    error = float(np.abs(flat_w - flat_v * scale[:, None]).max(initial=0.0))
    bound = _RECONSTRUCTION_RTOL * max(float(np.abs(flat_w).max(initial=0.0)), 1e-12)
    if error > bound:
        raise QuantizeFailure(f"layer {label}: the exported weight is not its trained {codes.grid} grid",
                              got=f"max |w - values*scale| {error:.3g}", expected=f"<= {bound:.3g}",
                              fix="report the model: something between training and export changed "
                                  "the weight other than per channel")
    return scale


# --------------------------------------------------------------------------- int8 input


def _quantize_input(model, node, grid) -> None:
    """QuantizeLinear + DequantizeLinear with the trained ``grid`` (lowbit.InputRange) on the data input."""
    from onnx import helper, numpy_helper

    prefix = f"{node.name}_input"
    dtype = np.int8 if grid.symmetric else np.uint8
    scale = numpy_helper.from_array(np.array(grid.scale, np.float32), f"{prefix}_scale")
    zero_point = numpy_helper.from_array(np.array(grid.zero_point, dtype), f"{prefix}_zero_point")
    source = node.input[0]
    new = [helper.make_node("QuantizeLinear", [source, scale.name, zero_point.name], [f"{prefix}_q"],
                            name=f"{prefix}_quantize"),
           helper.make_node("DequantizeLinear", [f"{prefix}_q", scale.name, zero_point.name], [f"{prefix}_dq"],
                            name=f"{prefix}_dequantize")]
    _insert_before(model, node, new)
    model.graph.initializer.extend([scale, zero_point])
    node.input[0] = f"{prefix}_dq"


def _bias_apart(model, node, initializers) -> None:
    """Conv/Gemm(x, W, b) -> Add(Conv/Gemm(x, W), b): see the module docstring (int8 activations)."""
    from onnx import helper, numpy_helper

    if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in initializers:
        return
    bias = numpy_helper.to_array(initializers[node.input[2]])
    if node.op_type == "Conv":  # broadcast over [N, C, spatial...]: the weight's rank
        bias = bias.reshape(1, -1, *([1] * (len(initializers[node.input[1]].dims) - 2)))
    if node.op_type == "Gemm" and _attr(node, "beta", 1.0) != 1.0:
        return  # not what a torch Linear exports; left as it is (the parity check judges it)
    stored = numpy_helper.from_array(bias, f"{node.name}_bias_apart")
    output = node.output[0]
    node.output[0] = f"{node.name}_without_bias"
    del node.input[2]
    add = helper.make_node("Add", [node.output[0], stored.name], [output], name=f"{node.name}_bias")
    index = list(model.graph.node).index(node)
    model.graph.node.insert(index + 1, add)
    model.graph.initializer.append(stored)


# --------------------------------------------------------------------------- DequantizeLinear


def _dequantize(model, node, weight_name: str, codes: Codes, scale: np.ndarray, transposed: bool) -> int:
    from onnx import helper, numpy_helper

    values = codes.values.T if transposed else codes.values
    stored = _int_tensor(np.ascontiguousarray(values), f"{weight_name}_q", int4=codes.bits < 8)
    scales = numpy_helper.from_array(scale, f"{weight_name}_scale")
    output = f"{weight_name}_dequantized"
    dq = helper.make_node("DequantizeLinear", [stored.name, scales.name], [output],
                          name=f"{node.name}_weight_dq", axis=1 if transposed else 0)
    _insert_before(model, node, [dq])
    model.graph.initializer.extend([stored, scales])
    _replace_input(node, weight_name, output)
    return _nbytes(stored) + _nbytes(scales)


def _int_tensor(values: np.ndarray, name: str, *, int4: bool):
    """An INT8 or INT4 initializer with raw (packed) data: INT4 two values a byte, first in the low nibble."""
    from onnx import TensorProto, helper, numpy_helper

    if not int4:
        return numpy_helper.from_array(values.astype(np.int8), name)
    nibbles = (values.reshape(-1).astype(np.int8) & 0x0F).astype(np.uint8)
    packed = pack(np.pad(nibbles, (0, nibbles.size % 2)), 4)
    return helper.make_tensor(name, TensorProto.INT4, values.shape, packed.tobytes(), raw=True)


# --------------------------------------------------------------------------- MatMulNBits


def _gemm_is_plain(node) -> bool:
    """A Gemm that is y = x @ W^T + b (what torch's Linear exports): MatMulNBits can take it."""
    if node.op_type == "MatMul":
        return True
    return (_attr(node, "transA", 0) == 0 and _attr(node, "alpha", 1.0) == 1.0
            and _attr(node, "beta", 1.0) == 1.0)


def _matmul_nbits(model, node, codes: Codes, scale: np.ndarray) -> int:
    """Replace the Gemm/MatMul node with MatMulNBits (plus Add for a bias); the bytes written."""
    from onnx import helper, numpy_helper

    bits = codes.bits
    block = MATMUL_NBITS_BLOCK[bits]
    n, k = codes.values.shape
    offset = 2 ** (bits - 1)  # MatMulNBits' default zero point: symmetric codes need none stored
    unsigned = codes.values.astype(np.int16) + (offset if codes.zero_point is None
                                                else codes.zero_point[:, None].astype(np.int16))
    blocks = -(-k // block)
    packed = pack(np.pad(unsigned.astype(np.uint8), ((0, 0), (0, blocks * block - k))), bits)
    prefix = node.name
    inits = [numpy_helper.from_array(packed.reshape(n, blocks, block * bits // 8), f"{prefix}_codes"),
             numpy_helper.from_array(np.repeat(scale[:, None], blocks, axis=1).reshape(-1), f"{prefix}_scales")]
    if codes.zero_point is not None:
        per_byte = 8 // bits
        points = np.repeat(codes.zero_point[:, None], blocks, axis=1)
        points = np.pad(points, ((0, 0), (0, -blocks % per_byte)))
        inits.append(numpy_helper.from_array(pack(points, bits).reshape(-1), f"{prefix}_zero_points"))
    has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
    product = f"{prefix}_product" if has_bias else node.output[0]
    new = [helper.make_node("MatMulNBits", [node.input[0], *(i.name for i in inits)], [product],
                            name=f"{prefix}_nbits", domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=ACCURACY_LEVEL)]
    if has_bias:
        new.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{prefix}_bias"))
    _insert_before(model, node, new)
    model.graph.node.remove(node)
    model.graph.initializer.extend(inits)
    return sum(_nbytes(init) for init in inits)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-bit codes along the last axis, first code in the low bits
    (MatMulNBits' order); the last axis must be a multiple of 8 / bits."""
    per_byte = 8 // bits
    grouped = codes.astype(np.uint8).reshape(*codes.shape[:-1], -1, per_byte)
    out = np.zeros(grouped.shape[:-1], dtype=np.uint8)
    for i in range(per_byte):
        out |= (grouped[..., i] << (bits * i)).astype(np.uint8)
    return out


# --------------------------------------------------------------------------- bit-packed binary


def _bitpacked(model, node, weight_name: str, codes: Codes, scale: np.ndarray, transposed: bool) -> int:
    """Signs as bits in a uint8 initializer; constant ops rebuild ``sign * scale`` (folded at load)."""
    from onnx import TensorProto, helper, numpy_helper

    signs = (codes.values > 0).reshape(-1)
    count = signs.size
    bits = np.packbits(signs, bitorder="little")  # weight i is bit i % 8 of byte i // 8
    p = f"{weight_name}_bits"
    inits = [numpy_helper.from_array(bits, p), numpy_helper.from_array(scale[:, None], f"{p}_scale")]
    consts = [numpy_helper.from_array(np.array([1], np.int64), f"{p}_axis"),
              numpy_helper.from_array(np.arange(8, dtype=np.uint8), f"{p}_shifts"),
              numpy_helper.from_array(np.array(1, np.uint8), f"{p}_one"),
              numpy_helper.from_array(np.array([-1], np.int64), f"{p}_all"),
              numpy_helper.from_array(np.array([count], np.int64), f"{p}_count"),
              numpy_helper.from_array(np.array([0], np.int64), f"{p}_zero"),
              numpy_helper.from_array(np.array(codes.values.shape, np.int64), f"{p}_shape"),
              numpy_helper.from_array(np.array(2, np.float32), f"{p}_two"),
              numpy_helper.from_array(np.array(1, np.float32), f"{p}_onef")]
    out = f"{weight_name}_unpacked"
    steps = [("Unsqueeze", [p, f"{p}_axis"], "column", {}),
             ("BitShift", ["column", f"{p}_shifts"], "shifted", {"direction": "RIGHT"}),
             ("BitwiseAnd", ["shifted", f"{p}_one"], "bit", {}),
             ("Reshape", ["bit", f"{p}_all"], "flat", {}),  # [bytes, 8] -> the bits in order
             ("Slice", ["flat", f"{p}_zero", f"{p}_count"], "used", {}),  # the last byte's padding off
             ("Cast", ["used"], "unit", {"to": TensorProto.FLOAT}),
             ("Reshape", ["unit", f"{p}_shape"], "grid", {}),
             ("Mul", ["grid", f"{p}_two"], "double", {}),
             ("Sub", ["double", f"{p}_onef"], "sign", {}),
             ("Mul", ["sign", f"{p}_scale"], "scaled", {})]
    if transposed:
        steps.append(("Transpose", ["scaled"], "layout", {"perm": [1, 0]}))
    names = {step[2]: f"{p}_{step[2]}" for step in steps}
    names[steps[-1][2]] = out
    new = [helper.make_node(op, [names.get(i, i) for i in inputs], [names[output]],
                            name=f"{node.name}_{output}", **attrs)
           for op, inputs, output, attrs in steps]
    _insert_before(model, node, new)
    model.graph.initializer.extend(inits + consts)
    _replace_input(node, weight_name, out)
    return sum(_nbytes(init) for init in inits + consts)


# --------------------------------------------------------------------------- graph helpers


def _insert_before(model, node, new) -> None:
    index = list(model.graph.node).index(node)
    for offset, item in enumerate(new):
        model.graph.node.insert(index + offset, item)


def _replace_input(node, old: str, new: str) -> None:
    for i, name in enumerate(node.input):
        if name == old:
            node.input[i] = new


def _attr(node, name: str, default):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _nbytes(tensor) -> int:
    return len(tensor.raw_data) if tensor.raw_data else tensor.ByteSize()


def _set_opsets(model, *, contrib: bool) -> None:
    """Opset 21 for INT4 DequantizeLinear, plus com.microsoft for MatMulNBits. The exporter writes
    18; what changed up to 21 for the ops a Conv/Linear model exports is added types, and the
    parity check against torch would catch anything that computes differently."""
    from onnx import helper

    kept = [o for o in model.opset_import if o.domain not in ("", "ai.onnx", "com.microsoft")]
    base = max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] + [OPSET])
    del model.opset_import[:]
    model.opset_import.extend([*kept, helper.make_opsetid("", base)]
                              + ([helper.make_opsetid("com.microsoft", 1)] if contrib else []))


def _drop_unused_initializers(model) -> None:
    read = {name for node in model.graph.node for name in node.input}
    unused = [init for init in model.graph.initializer if init.name not in read]
    for init in unused:
        model.graph.initializer.remove(init)


def weight_bytes(path: Path) -> int:
    """Bytes of all initializers in the file (the rest of the file is graph and metadata)."""
    import onnx

    model = onnx.load(str(path))
    return sum(_nbytes(init) for init in model.graph.initializer)
