"""Placement for onnxruntime's int8 kernels: narrow convolution inputs padded to 4 channels (the same
result, exactly), only where it applies; and what onnxruntime really runs (as_run)."""
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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def outputs(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("in_channels", [1, 3])
def test_narrow_input_is_padded_to_4_channels_with_the_same_result(tmp_path, in_channels):
    path = tiny_graph(tmp_path / "model.onnx", in_channels)
    x = np.random.default_rng(1).standard_normal((2, in_channels, 6, 6)).astype(np.float32)
    before = outputs(path, x)
    arranged = placement.arrange(path, enabled=True, flags=X86)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [p.to_json() for p in arranged.padded] == [
        {"node": "stem", "pad_node": "stem_pad_channels", "input_channels": in_channels, "padded_to": 4}]
    assert arranged.float_nodes == {"stem_pad_channels": "pads stem's input to 4 channels in float (placement)"}
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    assert weights["stem.weight"].shape == (8, 4, 3, 3) and not weights["stem.weight"][:, in_channels:].any()
    assert weights["dw.weight"].shape == (8, 1, 3, 3)  # grouped: a depthwise kernel of its own, untouched
    assert [node.op_type for node in model.graph.node] == ["Pad", "Conv", "Relu", "Conv", "Conv"]
    np.testing.assert_allclose(outputs(path, x), before, rtol=1e-5, atol=1e-5)


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
    (NHWC, hence Transposes at the edges), the Pad stays float, one Q and one DQ stay unfused."""
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
    assert ran["int8"] == {"QLinearConv": 3} and ran["float"] == {"Pad": 1}
    assert ran["conversions"] == {"DequantizeLinear": 1, "QuantizeLinear": 1}
    assert set(ran["layout"]) == {"Transpose"}
    assert as_run(path)["int8"] == {}  # the float model: nothing reads 8-bit data
