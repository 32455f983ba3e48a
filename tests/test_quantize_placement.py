"""Placement for onnxruntime's int8 kernels: narrow convolution inputs padded to 4 channels and heads
flattened channels last (the same result), only where it applies; and what onnxruntime runs (as_run)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelzip.quantization import placement
from modelzip.quantization.what_runs import as_run

X86 = ["avx2", "avx512f", "avx512_vnni"]


def _conv(name: str, source: str, target: str, weight: str, group: int = 1):
    return helper.make_node("Conv", [source, weight], [target], name=name, pads=[1, 1, 1, 1], group=group)


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(onnx.shape_inference.infer_shapes(model), str(path))  # shapes, as after quant_pre_process
    return path


def tiny_graph(path: Path, in_channels: int = 1) -> Path:
    """stem Conv(in -> 8) -> Relu -> depthwise Conv(8, groups 8) -> Conv(8 -> 8), seeded weights."""
    rng = np.random.default_rng(0)
    weights = {"stem.weight": (8, in_channels, 3, 3), "dw.weight": (8, 1, 3, 3), "pw.weight": (8, 8, 3, 3)}
    graph = helper.make_graph(
        [_conv("stem", "x", "a", "stem.weight"), helper.make_node("Relu", ["a"], ["b"], name="relu"),
         _conv("dw", "b", "c", "dw.weight", group=8), _conv("pw", "c", "y", "pw.weight")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_channels, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 6, 6])],
        [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
         for name, shape in weights.items()])
    return _save(graph, path)


def head_graph(path: Path, flatten: str = "reshape", size: int = 3) -> Path:
    """Conv(4 -> 6) -> Reshape/Flatten -> Gemm(6*size*size -> 5, transB) -> MatMul(5 -> 2)."""
    rng = np.random.default_rng(0)
    features = 6 * size * size
    weights = {"conv.weight": (6, 4, 3, 3), "fc.weight": (5, features), "out.weight": (5, 2)}
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in weights.items()]
    inits.append(numpy_helper.from_array(np.array([-1, features], np.int64), "flat_shape"))
    flat = (helper.make_node("Reshape", ["a", "flat_shape"], ["f"], name="flat") if flatten == "reshape"
            else helper.make_node("Flatten", ["a"], ["f"], name="flat", axis=1))
    graph = helper.make_graph(
        [_conv("conv", "x", "a", "conv.weight"), flat,
         helper.make_node("Gemm", ["f", "fc.weight"], ["h"], name="fc", transB=1),
         helper.make_node("MatMul", ["h", "out.weight"], ["y"], name="out")],
        "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    return _save(graph, path)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_narrow_input_is_padded_to_4_channels_with_the_same_result(tmp_path, in_channels):
    path = tiny_graph(tmp_path / "model.onnx", in_channels)
    x = np.random.default_rng(1).standard_normal((2, in_channels, 6, 6)).astype(np.float32)
    before = outputs(path, x)
    arranged = placement.arrange(path, enabled=True, flags=X86)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    # One channel is NHWC in memory already: padded channels last, for no layout change at run time.
    added = ["stem_as_nhwc", "stem_pad_channels", "stem_to_nchw"] if in_channels == 1 else ["stem_pad_channels"]
    how = "channels last (Reshape, one-hot MatMul, Transpose)" if in_channels == 1 else "Pad"
    assert [p.to_json() for p in arranged.padded] == [
        {"node": "stem", "input_channels": in_channels, "padded_to": 4, "how": how, "added_nodes": added}]
    assert set(arranged.float_nodes) == set(added) and arranged.flattened == ()
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    assert weights["stem.weight"].shape == (8, 4, 3, 3) and not weights["stem.weight"][:, in_channels:].any()
    assert weights["dw.weight"].shape == (8, 1, 3, 3)  # grouped: a depthwise kernel of its own, untouched
    ops = ["Reshape", "MatMul", "Transpose"] if in_channels == 1 else ["Pad"]
    assert [node.op_type for node in model.graph.node] == [*ops, "Conv", "Relu", "Conv", "Conv"]
    np.testing.assert_allclose(outputs(path, x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flatten", ["reshape", "flatten"])
def test_head_is_flattened_channels_last_with_the_same_result(tmp_path, flatten):
    path = head_graph(tmp_path / "model.onnx", flatten)
    x = np.random.default_rng(1).standard_normal((2, 4, 3, 3)).astype(np.float32)
    before = outputs(path, x)
    arranged = placement.arrange(path, enabled=True, flags=X86)
    assert [f.to_json() for f in arranged.flattened] == [{"node": "flat", "layer": "fc", "added_node": "flat_nhwc"}]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    transpose = model.graph.node[1]
    assert transpose.op_type == "Transpose" and list(transpose.attribute[0].ints) == [0, 2, 3, 1]
    np.testing.assert_allclose(outputs(path, x), before, rtol=1e-5, atol=1e-5)


def test_heads_that_need_no_reordering_are_left_alone(tmp_path):
    one_by_one = head_graph(tmp_path / "pooled.onnx", size=1)  # 1x1 maps: NCHW and NHWC order agree
    assert placement.arrange(one_by_one, enabled=True, flags=X86).flattened == ()
    shared = head_graph(tmp_path / "shared.onnx")
    model = onnx.load(str(shared))
    model.graph.output.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 54]))  # an output too
    onnx.save(model, str(shared))
    assert placement.arrange(shared, enabled=True, flags=X86).flattened == ()


def outputs(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_wide_inputs_other_cpus_and_placement_none_keep_the_graph(tmp_path):
    wide = tiny_graph(tmp_path / "wide.onnx", in_channels=4)
    original = wide.read_bytes()
    arranged = placement.arrange(wide, enabled=True, flags=X86)
    assert arranged.padded == () and "no convolution reads fewer than 4" in arranged.reason
    narrow = tiny_graph(tmp_path / "narrow.onnx")
    narrow_bytes = narrow.read_bytes()
    arm = placement.arrange(narrow, enabled=True, flags=["neon"])
    off = placement.arrange(narrow, enabled=False, flags=X86)
    assert arm.padded == off.padded == () and "not measured" in arm.reason and "none" in off.reason
    assert wide.read_bytes() == original and narrow.read_bytes() == narrow_bytes  # not even rewritten


def test_a_weight_shared_by_two_convolutions_is_not_padded(tmp_path):
    path = tiny_graph(tmp_path / "model.onnx")
    model = onnx.load(str(path))
    # A second stem reading the same input and weight: padding one would change the other.
    model.graph.node.insert(1, _conv("twin", "x", "t", "stem.weight"))
    model.graph.output.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 8, 6, 6]))
    onnx.save(model, str(path))
    assert placement.arrange(path, enabled=True, flags=X86).padded == ()


def test_as_run_counts_what_onnxruntime_executes(tmp_path):
    """Static QDQ int8 of the padded tiny graph: onnxruntime fuses every convolution into QLinearConv
    (NHWC), the padding stays float, one Q and one DQ stay unfused at the edges."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from modelzip.quantization.prepare import quiet

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = [{"x": np.random.default_rng(2).standard_normal((4, 1, 6, 6)).astype(np.float32)}]

        def get_next(self):
            return self.feeds.pop() if self.feeds else None

    path = tiny_graph(tmp_path / "model.onnx")
    arranged = placement.arrange(path, enabled=True, flags=X86)
    quantized = tmp_path / "int8.onnx"
    with quiet():
        quantize_static(str(path), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(arranged.float_nodes))
    ran = as_run(quantized)
    assert ran["int8"] == {"QLinearConv": 3} and ran["float"] == {"MatMul": 1, "Reshape": 1}
    assert ran["conversions"] == {"DequantizeLinear": 1, "QuantizeLinear": 1}
    assert ran["layout"] == {"Transpose": 1}  # back to NCHW for the float output; none at the input
    assert as_run(path)["int8"] == {}  # the float model: nothing reads 8-bit data
