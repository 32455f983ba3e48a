"""What an ONNX file holds and costs: stored parameters (total / non-zero), MACs, deflated bytes.

Conventions are those of the modelzip.evaluation package (MACs per sample; see its docstring).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import numpy as np
    import onnx

OnnxSource = Union[Path, str, "onnx.ModelProto"]



# ---------------------------------------------------------------- ONNX contents

# Initializer types that hold weights. int64 (and bool) initializers are shapes,
# axes and indices, not parameters; int32 is kept because quantize_static stores
# quantized biases as int32.
_WEIGHT_TYPES = frozenset(
    {1, 2, 3, 6, 10, 11, 16, 21, 22}
)  # FLOAT UINT8 INT8 INT32 FLOAT16 DOUBLE BFLOAT16 UINT4 INT4

# (op, input index) that holds quantized data -> index of its zero point.
_QUANTIZED_DATA_SLOTS = {
    ("DequantizeLinear", 0): 2,
    ("QLinearConv", 3): 5,
    ("QLinearMatMul", 3): 5,
    ("ConvInteger", 1): 3,
    ("MatMulInteger", 1): 3,
    ("QGemm", 3): 5,
}
# Inputs of com.microsoft ops (no ONNX schema to read) that are quantization metadata.
_CONTRIB_METADATA_INPUTS = {
    "MatMulNBits": frozenset({2, 3, 4}),  # scales, zero_points, g_idx of B
    "QGemm": frozenset({1, 2, 4, 5, 7, 8}),  # a/b/y scales and zero points
}


def onnx_param_counts(path_or_model: OnnxSource) -> tuple[int, int]:
    """(total, nonzero) elements of the weights an ONNX file stores.

    Counted: initializers of float, int8/uint8, int4/uint4 and int32 types with
    more than one element. Not counted: int64/bool initializers (shapes, axes,
    indices); every 1-element initializer (per-tensor scales and zero points,
    but also scalar constants an exporter makes, and a bias of a 1-output
    layer); and quantization metadata of any size: an initializer fed to a
    scale or zero-point input (Q/DQ, QLinear*, *Integer, QGemm, MatMulNBits).
    So a QDQ or QOperator int8 model has the same total as its float original.
    Quantized data counts as zero where it equals its zero point (it
    dequantizes to 0.0); MatMulNBits' packed B counts as N*K elements.
    Constant nodes and subgraphs are not inspected.
    """
    from onnx import numpy_helper

    model = _load_onnx(path_or_model, with_data=True)
    initializers = {init.name: init for init in model.graph.initializer}
    consumers = _initializer_consumers(model.graph, set(initializers))
    total = nonzero = 0
    for name, init in initializers.items():
        uses = consumers.get(name, [])
        if not _holds_weights(init, uses):
            continue
        elements, nonzeros = _count_initializer(numpy_helper.to_array(init), uses, initializers)
        total += elements
        nonzero += nonzeros
    return total, nonzero


def _holds_weights(init: onnx.TensorProto, uses: list[tuple[Any, int]]) -> bool:
    if init.data_type not in _WEIGHT_TYPES or math.prod(init.dims) <= 1:
        return False
    return not any(_is_quant_metadata(node, index) for node, index in uses)


def _initializer_consumers(graph: onnx.GraphProto, names: set[str]) -> dict[str, list[tuple[Any, int]]]:
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in names:
                consumers.setdefault(name, []).append((node, index))
    return consumers


def _is_quant_metadata(node: onnx.NodeProto, index: int) -> bool:
    if node.op_type in _CONTRIB_METADATA_INPUTS:
        return index in _CONTRIB_METADATA_INPUTS[node.op_type]
    formal = _formal_input_name(node.op_type, node.domain, index)
    # ONNX names them x_scale, w_zero_point, ...; LayerNorm's "Scale" is a weight.
    return formal is not None and formal.endswith(("_scale", "_zero_point"))


def _formal_input_name(op_type: str, domain: str, index: int) -> str | None:
    import onnx.defs

    try:
        schema = onnx.defs.get_schema(op_type, domain="" if domain == "ai.onnx" else domain)
    except onnx.defs.SchemaError:
        return None  # a contrib op we do not know: treat its inputs as weights
    if not schema.inputs:
        return None
    return schema.inputs[min(index, len(schema.inputs) - 1)].name  # the last one may be variadic


def _count_initializer(array: np.ndarray, uses: list, initializers: Mapping[str, Any]) -> tuple[int, int]:
    import numpy as np

    for node, index in uses:
        if node.op_type == "MatMulNBits" and index == 1:
            return _matmul_nbits_counts(node, array, initializers)
        if (node.op_type, index) in _QUANTIZED_DATA_SLOTS:
            zero = _zero_point_of(node, index, array.shape, initializers)
            return array.size, int(np.count_nonzero(_widen(array) != zero))
    return array.size, int(np.count_nonzero(_widen(array)))


def _widen(array: np.ndarray) -> np.ndarray:
    """int4/bfloat16 come back as ml_dtypes arrays; widen them so numpy can compare."""
    import numpy as np

    is_integer = array.dtype.kind in "iu" or "int" in str(array.dtype)
    return array.astype(np.int64) if is_integer else array.astype(np.float32)


def _zero_point_of(
    node: onnx.NodeProto, index: int, shape: tuple[int, ...], initializers: Mapping[str, Any]
) -> Any:
    """The zero point of quantized data, broadcastable to ``shape`` (0 if absent or not constant)."""
    import numpy as np
    from onnx import numpy_helper

    zero_index = _QUANTIZED_DATA_SLOTS[(node.op_type, index)]
    if zero_index >= len(node.input) or node.input[zero_index] not in initializers:
        return 0
    zero = _widen(numpy_helper.to_array(initializers[node.input[zero_index]]))
    if zero.size == 1 or not shape:
        return zero.reshape(())
    axis = _zero_point_axis(node) % len(shape)
    block_size = _attributes(node).get("block_size", 0)
    if block_size:  # blocked quantization (opset 21): one zero point per block along axis
        return np.repeat(zero, block_size, axis=axis).take(range(shape[axis]), axis=axis)
    view = [1] * len(shape)
    view[axis] = zero.size
    return zero.reshape(view)


def _zero_point_axis(node: onnx.NodeProto) -> int:
    """The axis a per-channel zero point runs along: output channels / output columns."""
    attributes = _attributes(node)
    if node.op_type == "DequantizeLinear":
        return attributes.get("axis", 1)
    if node.op_type in ("QLinearConv", "ConvInteger"):
        return 0  # weight [Cout, Cin/groups, *kernel]
    if node.op_type == "QGemm" and attributes.get("transB", 0):
        return 0  # B stored [N, K]
    return -1  # B stored [K, N]


def _matmul_nbits_counts(
    node: onnx.NodeProto, packed: np.ndarray, initializers: Mapping[str, Any]
) -> tuple[int, int]:
    """MatMulNBits stores B as [N, blocks, bytes] with `bits`-wide values, low bits first."""
    import numpy as np
    from onnx import numpy_helper

    attributes = _attributes(node)
    n, k, bits = attributes["N"], attributes["K"], attributes.get("bits", 4)
    blocks = packed.shape[1]
    values = _unpack_bits(packed, bits).reshape(n, blocks, -1)
    zero: Any = 2 ** (bits - 1)  # the documented default when zero_points is absent
    if len(node.input) > 3 and node.input[3] in initializers:
        stored = numpy_helper.to_array(initializers[node.input[3]])
        if stored.dtype == np.uint8:  # packed like B, one row per output column
            stored = _unpack_bits(stored.reshape(n, -1), bits)
        zero = _widen(stored).reshape(n, -1)[:, :blocks, None]
    differs = (values != zero).reshape(n, -1)[:, :k]
    return n * k, int(np.count_nonzero(differs))


def _unpack_bits(packed: np.ndarray, bits: int) -> np.ndarray:
    import numpy as np

    shifts = np.arange(8 // bits, dtype=np.uint8) * bits
    values = (packed[..., None] >> shifts) & ((1 << bits) - 1)
    return values.reshape(*packed.shape[:-1], -1).astype(np.int64)


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    from onnx import helper

    return {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}


def _load_onnx(path_or_model: OnnxSource, *, with_data: bool) -> onnx.ModelProto:
    """A private copy of the model (callers mutate it); weights only when needed."""
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(path_or_model)
        return copy
    return onnx.load(str(path_or_model), load_external_data=with_data)


def tensor_data_bytes(path_or_model: OnnxSource) -> int:
    """Bytes of tensor payload the file stores, in every graph of the model: initializers (sparse
    ones too) and Constant nodes' values (4 bytes a float, 8 an int in value_float(s)/value_int(s)).
    The rest of the file (names, nodes, types, metadata) is its *graph overhead*: file bytes minus
    this. Data stored outside the file (external data) is not counted, as it is not in the file's
    bytes either."""
    model = _load_onnx(path_or_model, with_data=False)
    total = 0
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        total += sum(_payload_bytes(init) for init in graph.initializer)
        total += sum(_payload_bytes(s.values) + _payload_bytes(s.indices) for s in graph.sparse_initializer)
        for node in graph.node:
            if node.op_type == "Constant":  # value_float(s) and value_int(s) hold data too
                total += sum(4 * len(a.floats) + 8 * len(a.ints) + (4 if a.name == "value_float" else 0)
                             + (8 if a.name == "value_int" else 0) for a in node.attribute)
            for attribute in node.attribute:
                total += _payload_bytes(attribute.t) if attribute.HasField("t") else 0
                total += sum(_payload_bytes(tensor) for tensor in attribute.tensors)
                graphs += [attribute.g] if attribute.HasField("g") else []
                graphs += list(attribute.graphs)
    return total


def _payload_bytes(tensor: onnx.TensorProto) -> int:
    if tensor.data_location == tensor.EXTERNAL:
        return 0
    if tensor.raw_data:
        return len(tensor.raw_data)
    from onnx import numpy_helper

    if tensor.string_data:
        return sum(len(item) for item in tensor.string_data)
    return int(numpy_helper.to_array(tensor).nbytes)


# ---------------------------------------------------------------- MACs (ONNX)


def onnx_macs(path_or_model: OnnxSource) -> int:
    """Multiply-accumulates of the ONNX graph for ONE sample.

    The graph inputs' first dimension is set to 1 (a symbolic 'batch' is
    replaced everywhere it appears; a fixed batch b is kept and the total
    divided by b), then onnx shape inference gives every tensor's shape; it sees
    through DequantizeLinear, so QDQ models count like their float originals.
    Where it cannot (contrib ops such as QGemm, QLinearAdd, MatMulNBits stop it),
    the missing shapes are read off one onnxruntime run on a zero input.
    Counted: Conv, ConvInteger, QLinearConv, ConvTranspose, Gemm, QGemm, MatMul,
    MatMulInteger, QLinearMatMul and com.microsoft MatMulNBits; nodes inside
    subgraphs (If/Loop) are not. Raises ValueError naming a node whose shapes
    stay unknown.
    """
    import onnx

    model = _load_onnx(path_or_model, with_data=False)
    samples = _set_batch_to_one(model.graph)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = _known_shapes(model.graph)
    missing = _unknown_mac_shapes(model.graph, shapes)
    if missing:
        shapes.update(_shapes_from_ort_run(path_or_model, missing))
    total = sum(_node_macs(node, shapes) for node in model.graph.node)
    return total // samples


def _set_batch_to_one(graph: onnx.GraphProto) -> int:
    """Make the batch 1; return how many samples the graph's fixed batch holds."""
    weights = {init.name for init in graph.initializer}
    symbols: set[str] = set()
    fixed = 1
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in weights or not dims:
            continue
        if dims[0].HasField("dim_value"):
            fixed = dims[0].dim_value or 1
        else:
            symbols.add(dims[0].dim_param)
            dims[0].dim_value = 1
    for value in graph.output:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in symbols:
                dim.dim_value = 1
    # Exporters record intermediate shapes with the symbolic batch; drop them so
    # inference recomputes them at batch 1 instead of clashing with them.
    del graph.value_info[:]
    return fixed


def _known_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    """name -> shape for every tensor whose shape is fully known."""
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        dims = tensor.shape.dim
        if tensor.HasField("shape") and all(dim.HasField("dim_value") for dim in dims):
            shapes[value.name] = tuple(dim.dim_value for dim in dims)
    return shapes


def _unknown_mac_shapes(graph: onnx.GraphProto, shapes: Mapping[str, tuple]) -> list[str]:
    """Names of tensors that counted nodes need and shape inference left unknown."""
    needed: list[str] = []
    for node in graph.node:
        if node.op_type in _MAC_KINDS:
            needed += [name for name in _tensors_needed(node) if name not in shapes and name not in needed]
    return needed


def _tensors_needed(node: onnx.NodeProto) -> list[str]:
    kind = _MAC_KINDS[node.op_type]
    if kind == "conv":
        return [node.output[0], node.input[_WEIGHT_INPUT[node.op_type]]]
    if kind == "conv_transpose":
        return [node.input[0], node.input[1]]
    if kind == "matmul_nbits":
        return [node.input[0]]
    return [node.input[0], node.output[0]]


def _shapes_from_ort_run(path_or_model: OnnxSource, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of ``names`` from running the model once at batch 1 on zeros."""
    import numpy as np
    import onnxruntime as ort
    from onnx import helper

    model = _load_onnx(path_or_model, with_data=True)
    _set_batch_to_one(model.graph)
    model.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # No graph rewrites: fusions could remove the very tensors asked for.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {}
    for model_input in session.get_inputs():
        if not all(isinstance(dim, int) for dim in model_input.shape):
            raise ValueError(
                f"cannot count MACs: input {model_input.name!r} has symbolic dims {model_input.shape}"
            )
        dtype = _FEED_DTYPES.get(model_input.type, "float32")
        feeds[model_input.name] = np.zeros(model_input.shape, dtype=dtype)
    results = session.run(names, feeds)
    return {name: tuple(result.shape) for name, result in zip(names, results, strict=True)}


_FEED_DTYPES = {"tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32"}


def _node_macs(node: onnx.NodeProto, shapes: Mapping[str, tuple]) -> int:
    """MACs = output elements x multiply-adds per output element."""
    kind = _MAC_KINDS.get(node.op_type)
    if kind is None:
        return 0

    def shape(index: int, *, output: bool = False) -> tuple[int, ...]:
        name = node.output[index] if output else node.input[index]
        if name not in shapes:
            raise ValueError(
                f"cannot count MACs of node {node.name!r} ({node.op_type}): shape of {name!r} unknown"
            )
        return shapes[name]

    if kind == "conv":  # weight [Cout, Cin/groups, *kernel]
        return math.prod(shape(0, output=True)) * math.prod(shape(_WEIGHT_INPUT[node.op_type])[1:])
    if kind == "conv_transpose":  # weight [Cin, Cout/groups, *kernel]: per input element
        return math.prod(shape(0)) * math.prod(shape(1)[1:])
    if kind == "gemm":
        a_shape = shape(0)
        depth = a_shape[0] if _attributes(node).get("transA", 0) else a_shape[1]
        return math.prod(shape(0, output=True)) * depth
    if kind == "matmul":
        return math.prod(shape(0, output=True)) * shape(0)[-1]
    attributes = _attributes(node)  # MatMulNBits: A [..., K] x B [K, N]
    return math.prod(shape(0)[:-1]) * attributes["N"] * attributes["K"]


_WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_MAC_KINDS = {
    "Conv": "conv",
    "ConvInteger": "conv",
    "QLinearConv": "conv",
    "ConvTranspose": "conv_transpose",
    "Gemm": "gemm",
    "QGemm": "gemm",
    "MatMul": "matmul",
    "MatMulInteger": "matmul",
    "QLinearMatMul": "matmul",
    "MatMulNBits": "matmul_nbits",
}


def zip_bytes(path: Path) -> int:
    """Size of the file after deflate at level 9 (zlib), i.e. its "zip-compressed size".

    This is how Deep Compression counts sparsity: zeros cost almost nothing once
    compressed, while the raw file keeps dense shapes. Only the named file is
    read: an ONNX model saved with external data needs its data file counted too.
    """
    compressor = zlib.compressobj(9)
    size = 0
    with open(path, "rb") as handle:
        # Streamed in chunks so a large model is not held in memory twice.
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            size += len(compressor.compress(chunk))
    return size + len(compressor.flush())
