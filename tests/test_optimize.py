"""The optimize machinery (modelzip.onnx_optimize) on tiny and hand-made ONNX graphs (seconds)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelzip.evaluation.onnx_stats import tensor_data_bytes
from modelzip.evaluation.runtime import ort_session
from modelzip.onnx_optimize import NAME_MAP_FILE, OptimizeFailure, OptimizeSettings
from modelzip.onnx_optimize.run import check_parity, optimize_onnx
from modelzip.testing import tiny_artifact

X = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)


def _outputs(path, feeds):
    return ort_session(path, threads=1).run(None, feeds)


def _save(model: onnx.ModelProto, path):
    model.ir_version = 10  # what this onnxruntime reads
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def test_names_are_shortened_and_outputs_identical(tmp_path):
    source = tiny_artifact("onnx", work_dir=tmp_path / "in").path
    result = optimize_onnx(source, tmp_path / "out", OptimizeSettings())
    before, after = onnx.load(str(source)), onnx.load(str(result.path))
    # The graph's inputs and outputs keep their names: callers feed and read them.
    assert [v.name for v in after.graph.input] == [v.name for v in before.graph.input]
    assert [v.name for v in after.graph.output] == [v.name for v in before.graph.output]
    kept = {v.name for v in [*after.graph.input, *after.graph.output]}
    inner = {n for node in after.graph.node for n in [*node.input, *node.output]} - kept
    assert inner and all(len(name) <= 2 and name.isalnum() and name.islower() for name in inner)
    assert all(len(node.name) <= 2 for node in after.graph.node)
    mapping = json.loads((tmp_path / "out" / NAME_MAP_FILE).read_text())
    assert mapping["schema"] == "modelzip.names/1"
    assert set(mapping["tensors"].values()) == inner | {init.name for init in after.graph.initializer}
    assert set(mapping["tensors"]) <= {n for node in before.graph.node for n in node.input} | {
        n for node in before.graph.node for n in node.output}
    assert set(mapping["nodes"]) == {node.name for node in before.graph.node}
    np.testing.assert_array_equal(_outputs(result.path, {"input": X})[0], _outputs(source, {"input": X})[0])
    assert result.parity["max_abs_diff"] == 0.0 and result.after.file_bytes < result.before.file_bytes
    assert result.after.tensor_bytes == result.before.tensor_bytes == tensor_data_bytes(source)


def test_optimizing_twice_changes_nothing_and_keeps_the_original_names(tmp_path):
    source = tiny_artifact("onnx", work_dir=tmp_path / "in").path
    once = optimize_onnx(source, tmp_path / "once", OptimizeSettings())
    twice = optimize_onnx(once.path, tmp_path / "twice", OptimizeSettings())
    assert twice.path.read_bytes() == once.path.read_bytes()
    # The second map composes with the first: its keys are still the exporter's names.
    assert json.loads(twice.name_map.read_text()) == json.loads(once.name_map.read_text())


def _declaring_extra_domains() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    gelu = helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft")
    add = helper.make_node("Add", ["g", "x"], ["y"])
    graph = helper.make_graph([gelu, add], "extra", [x], [y])
    opsets = [helper.make_opsetid(domain, 1) for domain in
              ("ai.onnx.training", "com.microsoft", "com.microsoft.nchwc", "org.pytorch.aten")]
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), *opsets])


def test_unused_domains_are_removed_and_used_ones_kept(tmp_path):
    model = _declaring_extra_domains()
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "extra.onnx"))  # the checker cannot check contrib ops
    result = optimize_onnx(tmp_path / "extra.onnx", tmp_path / "out", OptimizeSettings())
    assert sorted(result.domains_removed) == ["ai.onnx.training", "com.microsoft.nchwc", "org.pytorch.aten"]
    assert {o.domain for o in onnx.load(str(result.path)).opset_import} == {"", "com.microsoft"}


def _int8(tmp_path):
    """A static int8 QDQ tiny_cnn, as onnxruntime's quantizer writes it (extra domains and all)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    source = tiny_artifact("onnx", work_dir=tmp_path / "float").path

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": X}])

        def get_next(self):
            return next(self.batches, None)

    path = tmp_path / "int8.onnx"
    quantize_static(str(source), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return path


def _runtime_graph(path, tmp_path) -> Counter:
    """The op counts of the graph onnxruntime actually runs (after its QDQ fusions)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "runtime.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(str(tmp_path / "runtime.onnx")).graph.node)


def test_int8_file_loses_overhead_but_runs_the_same_integer_kernels(tmp_path):
    source = _int8(tmp_path)
    declared = {o.domain for o in onnx.load(str(source)).opset_import}
    result = optimize_onnx(source, tmp_path / "out", OptimizeSettings())
    optimized = onnx.load(str(result.path))
    assert {o.domain for o in optimized.opset_import} == {""}
    assert set(result.domains_removed) == declared - {""}
    assert result.stripped["zero_points"] > 0  # the int32 biases' all-zero zero points
    assert result.after.overhead_bytes < result.before.overhead_bytes / 2
    assert result.after.tensor_bytes < result.before.tensor_bytes  # dropped and shared zero points
    np.testing.assert_array_equal(_outputs(result.path, {"input": X})[0], _outputs(source, {"input": X})[0])
    fused = _runtime_graph(source, tmp_path)
    assert fused["QLinearConv"] > 0 and _runtime_graph(result.path, tmp_path) == fused


def _bias_scale_readers(path) -> list[str]:
    """What produces the scale of each int32 bias's DequantizeLinear: "initializer" or an op type."""
    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    return ["initializer" if node.input[1] in initializers else producers[node.input[1]]
            for node in model.graph.node if node.op_type == "DequantizeLinear"
            and initializers.get(node.input[0]) is not None
            and initializers[node.input[0]].data_type == TensorProto.INT32]


def test_bias_scales_are_computed_from_the_layer_scales_and_fuse_the_same(tmp_path):
    source = _int8(tmp_path)
    assert set(_bias_scale_readers(source)) == {"initializer"}
    result = optimize_onnx(source, tmp_path / "out", OptimizeSettings())
    readers = _bias_scale_readers(result.path)
    assert readers and set(readers) == {"Mul"} and result.bias_scales_derived == len(readers)
    assert result.to_json()["bias_scales_derived"] == len(readers)
    np.testing.assert_array_equal(_outputs(result.path, {"input": X})[0], _outputs(source, {"input": X})[0])
    fused = _runtime_graph(source, tmp_path)
    assert fused["QGemm"] > 0 and _runtime_graph(result.path, tmp_path) == fused
    # A second optimization folds the Mul and derives it again: the file does not change.
    again = optimize_onnx(result.path, tmp_path / "again", OptimizeSettings())
    assert again.path.read_bytes() == result.path.read_bytes()


def test_a_bias_scale_that_is_not_the_product_stays_stored(tmp_path):
    source = _int8(tmp_path)
    model = onnx.load(str(source))
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        data = initializers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if data is not None and data.data_type == TensorProto.INT32:
            scale = initializers[node.input[1]]
            scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(1.5), scale.name))
    edited = _save(model, tmp_path / "edited.onnx")
    result = optimize_onnx(edited, tmp_path / "out", OptimizeSettings())
    assert result.bias_scales_derived == 0 and set(_bias_scale_readers(result.path)) == {"initializer"}


def _with_constants(tmp_path):
    """y = x + (a * b) reshaped, where a, b and the shape are Constant nodes; plus a
    DequantizeLinear of a constant, an Expand that would grow the file, and a dead node."""
    f = TensorProto.FLOAT
    a = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(2, 2), "a_value")
    nodes = [
        helper.make_node("Constant", [], ["a"], value=a),
        helper.make_node("Constant", [], ["b"], value_float=2.0),
        helper.make_node("Constant", [], ["shape"], value_ints=[4]),
        helper.make_node("Mul", ["a", "b"], ["ab"]),
        helper.make_node("Reshape", ["ab", "shape"], ["ab_flat"]),
        helper.make_node("Add", ["x", "ab_flat"], ["sum"]),
        helper.make_node("DequantizeLinear", ["q", "q_scale"], ["dq"]),
        helper.make_node("Add", ["sum", "dq"], ["y"]),
        helper.make_node("Expand", ["one", "big_shape"], ["big"]),
        helper.make_node("Add", ["y", "y"], ["y2"]),
        helper.make_node("ReduceSum", ["big"], ["big_sum"], keepdims=0),
        helper.make_node("Add", ["y2", "big_sum"], ["z"]),
        helper.make_node("Neg", ["x"], ["unused"]),  # dead: nothing reads it
    ]
    initializers = [
        numpy_helper.from_array(np.array([1, -2, 3, 4], dtype=np.int8), "q"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "q_scale"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array([512, 512], dtype=np.int64), "big_shape"),
        numpy_helper.from_array(np.array([1, -2, 3, 4], dtype=np.int8), "q_copy"),  # unused
    ]
    graph = helper.make_graph(nodes, "constants", [helper.make_tensor_value_info("x", f, [4])],
                              [helper.make_tensor_value_info("z", f, [4])], initializers)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "c.onnx")


def test_constants_fold_except_dequantize_and_growth(tmp_path):
    source = _with_constants(tmp_path)
    result = optimize_onnx(source, tmp_path / "out", OptimizeSettings(shorten_names=False))
    ops = Counter(node.op_type for node in onnx.load(str(result.path)).graph.node)
    # Constant, Mul and Reshape became one initializer; the quantized weight and the Expand
    # (4 bytes -> 1 MB) stay nodes; the dead Neg went with its outputs.
    assert ops == {"Add": 4, "DequantizeLinear": 1, "Expand": 1, "ReduceSum": 1}
    assert result.folded.constant_nodes == 3 and result.folded.nodes == 2
    assert result.removed == {"nodes": 1, "initializers": 1}
    x = np.array([0.5, -1.0, 2.0, 3.0], dtype=np.float32)
    np.testing.assert_array_equal(_outputs(result.path, {"x": x})[0], _outputs(source, {"x": x})[0])


def test_a_chain_of_small_growths_does_not_fold_into_a_large_tensor(tmp_path):
    """Each Cast doubles 512 stored bytes by less than the slack, but the chain would store 4 kB
    (as unpacking bit-packed weights would store them as float): folding stops where the result
    exceeds the stored bytes it is computed from by more than the slack."""
    packed = numpy_helper.from_array(np.arange(512, dtype=np.uint8), "packed")
    casts = [(TensorProto.UINT16, "wide"), (TensorProto.UINT32, "wider"), (TensorProto.UINT64, "widest")]
    nodes = [helper.make_node("Cast", [source], [name], to=to)
             for (to, name), source in zip(casts, ["packed", "wide", "wider"])]
    nodes += [helper.make_node("Cast", ["widest"], ["as_float"], to=TensorProto.FLOAT),
              helper.make_node("Add", ["x", "as_float"], ["y"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [512])], [packed])
    source = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "g.onnx")
    result = optimize_onnx(source, tmp_path / "out", OptimizeSettings(shorten_names=False))
    model = onnx.load(str(result.path))
    assert max(numpy_helper.to_array(init).nbytes for init in model.graph.initializer) <= 512 + 1024
    assert result.folded.nodes == 1  # uint8 -> uint16 (1 kB); uint32 would be 2 kB from 512 bytes
    x = np.ones(512, dtype=np.float32)
    np.testing.assert_array_equal(_outputs(result.path, {"x": x})[0], _outputs(source, {"x": x})[0])


def test_identical_initializers_are_stored_once(tmp_path):
    f = TensorProto.FLOAT
    weight = np.ones((4,), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w1"], ["m"]), helper.make_node("Add", ["m", "w2"], ["y"])], "dupes",
        [helper.make_tensor_value_info("x", f, [4])], [helper.make_tensor_value_info("y", f, [4])],
        [numpy_helper.from_array(weight, "w1"), numpy_helper.from_array(weight, "w2")])
    source = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "d.onnx")
    result = optimize_onnx(source, tmp_path / "out", OptimizeSettings())
    optimized = onnx.load(str(result.path))
    assert len(optimized.graph.initializer) == 1 and result.shared_initializers == 1
    mapping = json.loads(result.name_map.read_text())["tensors"]
    assert mapping["w1"] == mapping["w2"] == optimized.graph.initializer[0].name


def test_names_read_inside_subgraphs_follow_the_rename(tmp_path):
    f = TensorProto.FLOAT
    then_branch = helper.make_graph([helper.make_node("Add", ["x", "outer_w"], ["then_y"])], "then", [],
                                    [helper.make_tensor_value_info("then_y", f, [2])])
    else_branch = helper.make_graph([helper.make_node("Sub", ["x", "outer_w"], ["else_y"])], "else", [],
                                    [helper.make_tensor_value_info("else_y", f, [2])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Constant", [], ["zero"], value_float=0.0),
             helper.make_node("Greater", ["total", "zero"], ["positive"]),
             helper.make_node("If", ["positive"], ["y"], then_branch=then_branch, else_branch=else_branch)]
    graph = helper.make_graph(nodes, "branches", [helper.make_tensor_value_info("x", f, [2])],
                              [helper.make_tensor_value_info("y", f, [2])],
                              [numpy_helper.from_array(np.array([10, 20], dtype=np.float32), "outer_w")])
    source = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "if.onnx")
    result = optimize_onnx(source, tmp_path / "out", OptimizeSettings())
    for x in (np.array([1, 2], dtype=np.float32), np.array([-1, -2], dtype=np.float32)):
        np.testing.assert_array_equal(_outputs(result.path, {"x": x})[0], _outputs(source, {"x": x})[0])
    assert "outer_w" in json.loads(result.name_map.read_text())["tensors"]


def test_a_changed_output_fails_with_the_difference(tmp_path):
    first = tiny_artifact("onnx", work_dir=tmp_path / "a", seed=0).path
    other = tiny_artifact("onnx", work_dir=tmp_path / "b", seed=1).path
    with pytest.raises(OptimizeFailure) as info:
        check_parity(first, other, OptimizeSettings())
    assert info.value.got.startswith("max |diff| ") and "1e-06 x the largest |logits|" in info.value.expected
    assert check_parity(first, first, OptimizeSettings())["max_abs_diff"] == 0.0


def test_settings_switch_each_edit_off(tmp_path):
    source = _int8(tmp_path)
    off = OptimizeSettings(shorten_names=False, remove_unused_domains=False, fold_constants=False,
                           dedupe_initializers=False, strip=False, derive_bias_scales=False)
    result = optimize_onnx(source, tmp_path / "out", off)
    before, after = onnx.load(str(source)), onnx.load(str(result.path))
    assert result.name_map is None and not (tmp_path / "out" / NAME_MAP_FILE).exists()
    assert len(after.opset_import) == len(before.opset_import)
    assert [n.name for n in after.graph.node] == [n.name for n in before.graph.node]
    assert len(after.graph.value_info) == len(before.graph.value_info)
    assert (result.stripped, result.folded, result.shared_initializers, result.domains_removed,
            result.names_shortened, result.bias_scales_derived) == (None, None, None, None, None, None)


def test_tensor_data_bytes_counts_initializers_and_constant_tensors(tmp_path):
    source = _with_constants(tmp_path)
    # Initializers: q 4 + q_scale 4 + one 4 + big_shape 16 + q_copy 4; Constants: a 16 + b 4 + shape 8.
    assert tensor_data_bytes(source) == 32 + 28
    result = optimize_onnx(source, tmp_path / "out", OptimizeSettings())
    assert result.after.tensor_bytes == tensor_data_bytes(result.path)
    assert result.after.overhead_bytes == result.after.file_bytes - result.after.tensor_bytes


def test_export_optimize_quantize_still_finds_layers_by_module_name(tmp_path):
    from modelzip.onnx_export import export_onnx
    from modelzip.passes.optimize import OptimizePass
    from modelzip.passes.quantize import QuantizePass
    from modelzip.testing import make_context

    torch_model = tiny_artifact("torch")
    (tmp_path / "export").mkdir()
    path = tmp_path / "export" / "model.onnx"  # dynamo: it records each node's module (node_modules.json)
    export_onnx(torch_model.module, torch_model.input_shape, path, opset=18, exporter="dynamo", dynamic_batch=True,
                pass_name="export", step=None)
    exported = torch_model.evolve(kind="onnx", path=path, module=None)
    optimized = OptimizePass().run(exported, OptimizePass.Config(), make_context("optimize", work_dir=tmp_path / "o"))
    modules = json.loads((tmp_path / "o" / "node_modules.json").read_text())
    assert "classifier.1" in modules.values() and all(len(node) <= 2 for node in modules)
    ctx = make_context("quantize", work_dir=tmp_path / "q")
    QuantizePass().run(optimized, QuantizePass.Config(mode="dynamic", exclude=("classifier.1",)), ctx)
    assert ctx.details["exclude"] == {"classifier.1": ["classifier.1"]}
