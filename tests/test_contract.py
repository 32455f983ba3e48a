"""Every registered pass keeps the public plugin contract (modelzip.testing.check_pass_contract)."""
from __future__ import annotations

import pytest

from modelzip.registry import PassRegistry
from modelzip.testing import check_pass_contract, make_context

REGISTRY = PassRegistry.from_entry_points()

# Small settings, where the defaults would train or calibrate for long (or need a choice).
CONFIGS = {
    "finetune": {"epochs": 1},
    "prune": {"method": "channel", "ratio": 0.25, "round_to": None},  # the tiny model is 8/16 wide
    "quantize": {"calibration_samples": 64},
    "lowrank": {"rank_ratio": 0.5},
    "export": {"opset": 18},
    "optimize": {},
    # One teacher (tiny_cnn, saved beside the recipe by the test) for the single-task tiny model.
    "merge": {"teachers": {"y": {"source": "modelzip.zoo:tiny_cnn", "args": {"num_classes": 4},
                                 "checkpoint": "teacher.pt"}}, "epochs": 1},
}


@pytest.mark.parametrize("name", REGISTRY.names())
def test_builtin_pass_keeps_the_contract(name, tmp_path):
    pass_cls = REGISTRY.get(name)
    if name not in CONFIGS:
        pytest.fail(f"add small settings for the new pass {name!r} to CONFIGS")
    if name == "merge":
        import torch

        from modelzip.zoo import tiny_cnn

        torch.save(tiny_cnn(num_classes=4).state_dict(), tmp_path / "teacher.pt")
    # Each pass on the first kind it takes (optimize takes ONNX only).
    check_pass_contract(pass_cls, pass_cls.Config(**CONFIGS[name]), artifact_kind=pass_cls.consumes[0],
                        work_dir=tmp_path)


def test_onnx_input_keeps_the_contract(tmp_path):
    produced = check_pass_contract(REGISTRY.get("quantize"), REGISTRY.get("quantize").Config(mode="dynamic"),
                                   artifact_kind="onnx", work_dir=tmp_path)
    assert produced.kind == "onnx"


def test_contract_names_a_broken_promise(tmp_path):
    from modelzip import Pass, PassConfig

    class Mutating(Pass):
        name = "mutating"
        summary = "zeroes the input's weights in place"
        Config = PassConfig

        def run(self, artifact, config, ctx):
            for p in artifact.module.parameters():
                p.data.zero_()
            return artifact

    with pytest.raises(AssertionError, match="mutated its input"):
        check_pass_contract(Mutating, work_dir=tmp_path)


def test_make_context_gives_synthetic_data_and_a_baseline(tmp_path):
    ctx = make_context("demo", work_dir=tmp_path)
    assert ctx.work_dir == tmp_path and ctx.baseline.kind == "torch" and ctx.device == "cpu"
    assert ctx.data.num_classes == 4 and ctx.data.sample_shape == (1, 28, 28)
    import torch

    assert ctx.build_module()(torch.zeros(1, 1, 28, 28)).shape == (1, 4)
