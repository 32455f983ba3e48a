"""The float ONNX model a quantizer starts from, and onnxruntime's pre-processing of it."""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

from modelzip.quantization import QuantizeFailure

FLOAT_FILE = "float.onnx"
MODULE_MAP_FILE = "node_modules.json"  # written by modelzip.onnx_export beside each export

# Ops that only appear in a model that is already quantized.
QUANTIZED_MARKERS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulNBits", "MatMulInteger",
    "ConvInteger", "QLinearConv", "QLinearMatMul", "QGemm", "GatherBlockQuantized",
})


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence onnxruntime's quantization tools for the duration.

    They log at INFO on the root logger (matmul_nbits_quantizer even calls logging.basicConfig
    when imported), print histogram statistics to stdout and warn about every tensor without
    a range. The root logger's handlers and level are put back afterwards.
    """
    root = logging.getLogger()
    ort_logger = logging.getLogger("onnxruntime")
    handlers, level, ort_level = root.handlers[:], root.level, ort_logger.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        ort_logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
            ort_logger.setLevel(ort_level)


def float_onnx(source: Path, scratch: Path, work_dir: Path) -> Path:
    """The float ONNX to quantize: ``source`` copied into ``scratch``, refused if it is already
    quantized. The node -> torch module map beside it (node_modules.json, written by every
    export) is put in ``work_dir``, so it keeps travelling with the artifact produced there.
    """
    path = scratch / FLOAT_FILE
    shutil.copyfile(source, path)
    refuse_quantized(path)
    if (Path(source).parent / MODULE_MAP_FILE).is_file():
        shutil.copyfile(Path(source).parent / MODULE_MAP_FILE, work_dir / MODULE_MAP_FILE)
    return path


def refuse_quantized(path: Path) -> None:
    """Quantizing twice compounds the error and ORT's tools mishandle existing Q/DQ nodes."""
    import onnx

    ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    found = sorted(ops & QUANTIZED_MARKERS)
    if found:
        raise QuantizeFailure("the input ONNX model is already quantized", got=f"quantized ops {found}",
                              expected="a float model",
                              fix="quantize once: remove the earlier quantize pass (or this one)")


def preprocess(source: Path, target: Path) -> str:
    """ORT's quant_pre_process (symbolic shape inference + basic graph optimizations such as
    Conv+BatchNorm folding + ONNX shape inference), which avoids known quantizer crashes.

    Symbolic shape inference fails on some graphs; then it is retried without it, and as a
    last resort the model is used as is. Returns a note on what was done, for the report.
    Every node gets a name, since the quantizers select nodes by name.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    note = "quant_pre_process"
    try:
        with quiet():
            quant_pre_process(str(source), str(target))
    except Exception as first:  # ORT raises assorted types from its shape inference
        try:
            with quiet():
                quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
            note = f"quant_pre_process without symbolic shapes ({type(first).__name__})"
        except Exception as second:
            shutil.copyfile(source, target)
            note = f"not pre-processed: {type(second).__name__}: {str(second).splitlines()[0][:120]}"
    _name_nodes(target)
    return note


def _name_nodes(path: Path) -> None:
    import onnx

    model = onnx.load(str(path))
    unnamed = [node for node in model.graph.node if not node.name]
    if not unnamed:
        return
    taken = {node.name for node in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    onnx.save(model, str(path))


def graph_input_name(model) -> str:
    """The model's (single) data input: graph inputs that are not initializers."""
    initializers = {init.name for init in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    if len(names) != 1:
        raise ValueError(f"expected a model with one input, got {names}")
    return names[0]
