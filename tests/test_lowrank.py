"""lowrank: exact on low-rank weights, skips layers it cannot make cheaper, round-trips."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from modelzip import load_recipe, run_recipe
from modelzip.errors import RecipeError
from modelzip.lowrank import factorize
from modelzip.lowrank.ranks import choose_rank as choose_settings_rank
from modelzip.passes.lowrank import LowRankConfig, lowrank_settings
from modelzip.zoo import fashion_cnn, resnet20
from tests.test_pipeline import TINY


def low_rank(shape: tuple[int, ...], rank: int, generator: torch.Generator) -> torch.Tensor:
    rows, cols = shape[0], int(torch.tensor(shape[1:]).prod())
    return (torch.randn(rows, rank, generator=generator) @ torch.randn(rank, cols, generator=generator)).reshape(shape)


def choose_rank(s, config: LowRankConfig) -> int:
    return choose_settings_rank(s, lowrank_settings(config))


def factorize_model(model, config: LowRankConfig, input_shape):
    """The machinery with the pass's settings; per-layer records as the report has them."""
    module, records = factorize.factorize_model(model, lowrank_settings(config), input_shape)
    return module, [record.to_json() for record in records]


def test_choose_rank():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # squared: 9, 4, 1 -> cumulative 9/14, 13/14, 1
    assert choose_rank(s, LowRankConfig(energy=0.6, round_to=1)) == 1
    assert choose_rank(s, LowRankConfig(energy=0.9, round_to=1)) == 2
    assert choose_rank(s, LowRankConfig(energy=1.0, round_to=1)) == 3
    assert choose_rank(s, LowRankConfig(rank_ratio=0.5, round_to=1)) == 2
    assert choose_rank(s, LowRankConfig(rank_ratio=0.1, min_rank=3, round_to=1)) == 3


def test_ranks_round_up_to_a_multiple_but_not_past_the_full_rank():
    s = torch.linspace(64, 1, 64)
    assert choose_rank(s, LowRankConfig(rank_ratio=0.3, round_to=16)) == 32  # 20 -> 32
    assert choose_rank(s, LowRankConfig(rank_ratio=0.3, round_to=8)) == 24
    assert choose_rank(s, LowRankConfig(rank_ratio=0.25, round_to=16)) == 16  # already a multiple
    assert choose_rank(s[:20], LowRankConfig(rank_ratio=0.5, round_to=16)) == 16  # 10 -> 16
    assert choose_rank(s[:20], LowRankConfig(rank_ratio=0.9, round_to=16)) == 20  # 18 -> 32 -> capped at 20


@pytest.mark.parametrize("conv", ["channel", "spatial"])
def test_exact_on_low_rank_weights(conv):
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 8 * 8, 32))
    with torch.no_grad():
        if conv == "channel":
            model[0].weight.copy_(low_rank((16, 8, 3, 3), 2, g))
        else:  # rank 2 in the (in, kh) x (out, kw) arrangement
            matrix = low_rank((8 * 3, 16 * 3), 2, g)
            model[0].weight.copy_(matrix.reshape(8, 3, 16, 3).permute(2, 0, 1, 3))
        model[3].weight.copy_(low_rank((32, 16 * 64), 3, g))
    config = LowRankConfig(energy=1.0, conv=conv, round_to=1)
    factorized, layers = factorize_model(model, config, (1, 8, 16, 16))
    assert [layer["rank"] for layer in layers] == [2, 3]
    assert all(layer["factorized"] for layer in layers)
    assert isinstance(factorized[0], nn.Sequential) and isinstance(factorized[3], nn.Sequential)
    x = torch.randn(4, 8, 16, 16, generator=g)
    with torch.no_grad():
        assert torch.allclose(factorized(x), model(x), rtol=1e-4, atol=1e-3)


def test_layers_that_would_not_get_cheaper_are_kept():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))  # full rank 4: r(4+4) >= 16 for r >= 2
    factorized, (layer,) = factorize_model(model, LowRankConfig(energy=1.0), (1, 4))
    assert not layer["factorized"] and "not cheaper" in layer["reason"]
    assert isinstance(factorized[1], nn.Linear)


def test_ignore_and_linear_switch():
    model = fashion_cnn()
    _, layers = factorize_model(model, LowRankConfig(rank_ratio=0.25, ignore=("features.*",), linear=True),
                                (1, 1, 28, 28))
    assert [layer["name"] for layer in layers] == ["classifier.1", "classifier.4"]
    _, layers = factorize_model(model, LowRankConfig(rank_ratio=0.25, linear=False), (1, 1, 28, 28))
    assert all(layer["kind"].startswith("conv") for layer in layers)


def test_residual_network_channel_svd_cuts_macs():
    from modelzip.evaluation.torch_stats import torch_macs

    model = resnet20()
    factorized, layers = factorize_model(model, LowRankConfig(rank_ratio=0.25, round_to=1), (1, 1, 28, 28))
    assert sum(layer["factorized"] for layer in layers) > 10
    assert torch_macs(factorized, (1, 1, 28, 28)) < 0.6 * torch_macs(model, (1, 1, 28, 28))
    assert factorized(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_rounded_ranks_leave_narrow_stages_whole():
    # ResNet-20's 16-channel convs would need rank 16 (their full rank): not cheaper, kept.
    _, layers = factorize_model(resnet20(), LowRankConfig(rank_ratio=0.25, round_to=16), (1, 1, 28, 28))
    by_name = {layer["name"]: layer for layer in layers}
    assert not by_name["layer1.0.conv1"]["factorized"]
    assert "rank 16 of 16 is not cheaper" in by_name["layer1.0.conv1"]["reason"]
    factorized = [layer for layer in layers if layer["factorized"]]
    assert {layer["name"].split(".")[0] for layer in factorized} == {"layer2", "layer3"}
    assert all(layer["rank"] == 16 for layer in factorized)


def test_config_needs_exactly_one_target(recipe_file):
    body = TINY.replace("  - export: {}\n", "  - lowrank: {energy: 0.9, rank_ratio: 0.5}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file(body))
    assert info.value.problems[0].path == "passes[0].lowrank"
    assert "exactly one" in info.value.problems[0].message


def test_pipeline_factorizes_exports_and_reloads(tiny_checkpoint, recipe_file):
    # round_to 1: the tiny model's widths (8, 16) are below the default rounding of 16.
    body = TINY.replace("  - export: {}\n", "  - lowrank: {rank_ratio: 0.5, round_to: 1}\n  - export: {}\n")
    recipe = load_recipe(recipe_file(body))
    result = run_recipe(recipe)
    first, step = result.report, result.report["steps"][0]
    assert step["details"]["factorized"] >= 1
    table = step["details"]["tables"][0]
    assert [row[0] for row in table["rows"]] == [layer["name"] for layer in step["details"]["layers"]]
    markdown = (result.output_dir / "report.md").read_text()
    assert "## Step 0: lowrank, per layer" in markdown and "| features.4 | conv-channel |" in markdown
    assert step["metrics"]["macs"] < first["baseline"]["torch"]["macs"]
    assert first["steps"][1]["details"]["parity"]["top1_agreement"] == 1.0
    again = run_recipe(recipe).report  # reloads the factorized module from the cache
    assert [s["cached"] for s in again["steps"]] == [True, True, True]  # lowrank, export, optimize
    assert again["steps"][0]["metrics"] == step["metrics"]


def test_composes_with_prune_finetune_and_static_int8(tmp_path, tiny_checkpoint, recipe_file):
    import onnx

    passes = ("  - prune: {method: channel, ratio: 0.25, round_to: null}\n"
              "  - lowrank: {rank_ratio: 0.5, round_to: 1}\n"
              "  - finetune: {steps: 2}\n"
              "  - quantize: {mode: static}\n")
    report = run_recipe(load_recipe(recipe_file(TINY.replace("  - export: {}\n", passes)))).report
    prune, lowrank, finetune, quantize, optimize = report["steps"]
    assert lowrank["details"]["factorized"] >= 1
    assert lowrank["metrics"]["macs"] < prune["metrics"]["macs"]
    assert finetune["metrics"]["macs"] == lowrank["metrics"]["macs"]  # finetune keeps the factorized shapes
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    assert sum(node.op_type == "Conv" for node in graph.node) > 2  # at least one conv became two
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)
    assert quantize["kind"] == "onnx" and report["final"]["accuracy"] > 0
    assert optimize["implicit"] and optimize["metrics"]["accuracy"] == report["final"]["accuracy"]
