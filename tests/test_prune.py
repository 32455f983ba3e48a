"""The prune pass: channel removal on real architectures, magnitude zeros, config errors."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from modelzip import load_recipe, run_recipe
from modelzip.artifacts import Artifact, save_artifact
from modelzip.errors import PassError, RecipeError
from modelzip.evaluation.onnx_stats import zip_bytes
from modelzip.evaluation.torch_stats import torch_macs
from modelzip.onnx_export import check_parity, export_onnx
from modelzip.passes.prune import PruneConfig, PrunePass, channel_settings
from modelzip.pipeline import RunOptions
from modelzip.pruning import PruneFailure, check_reloadable
from modelzip.pruning.channel import prune_channels
from modelzip.pruning.magnitude import lamp_scores, prune_magnitude
from modelzip.recipe import ModelSpec
from modelzip.registry import PassRegistry
from modelzip.sources.models import build_model
from modelzip.zoo import fashion_cnn, tiny_cnn
from tests.conftest import synthetic_recipe

SHAPE = (1, 1, 28, 28)

# A user architecture (`<module>:<callable>`) with a depthwise residual block, a grouped
# convolution, a concatenation and a BatchNorm1d + Linear behind a flatten.
USER_NET = '''
import torch
from torch import nn

class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.pw = nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.pw(torch.relu(self.bn1(self.dw(x))))))

class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.block = Block(16)
        self.left = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=4)
        self.right = nn.Conv2d(16, 8, 1, stride=2)
        self.mix = nn.Conv2d(24, 32, 3, padding=1)
        self.bn = nn.BatchNorm1d(32 * 7 * 7)
        self.head = nn.Linear(32 * 7 * 7, num_classes)

    def forward(self, x):
        x = self.block(torch.relu(self.stem(x)))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        x = nn.functional.max_pool2d(torch.relu(self.mix(x)), 2)
        return self.head(self.bn(torch.flatten(x, 1)))

def build(num_classes=10):
    return Net(num_classes)
'''

# name -> (model spec, prune parameters, exporter). The torchvision nets export with the
# TorchScript exporter: dynamo takes ~10 s for MobileNetV2 on two cores.
CASES = {
    "fashion_cnn": (dict(source="modelzip.zoo:fashion_cnn"), dict(target_macs=0.5), "dynamo"),
    # Depthwise-separable residual blocks (issue #13), with the rounding auto gives on AVX-512.
    "dsresnet": (dict(source="modelzip.zoo:dsresnet"), dict(target_macs=0.5, round_to=16), "torchscript"),
    "resnet20": (dict(source="modelzip.zoo:resnet20"), dict(ratio=0.5), "torchscript"),
    "user": (dict(source="prune_test_usernet:build"), dict(target_macs=0.5), "dynamo"),
    "resnet18": (dict(source="torchvision:resnet18", args={"num_classes": 10}, in_channels=1),
                 dict(ratio=0.5), "torchscript"),
    "mobilenet_v2": (dict(source="torchvision:mobilenet_v2", args={"num_classes": 10}, in_channels=1),
                     dict(ratio=0.5), "torchscript"),
}


def channel(**params):
    """``method: channel`` settings, as the prune pass maps them from its config."""
    return channel_settings(PruneConfig(method="channel", **params))


def _spec(name: str) -> ModelSpec:
    return ModelSpec(input_shape=SHAPE, **CASES[name][0])


def _grouped(module: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (m.groups, m.in_channels) for n, m in module.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups > 1}


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """Each CASES model, seeded, channel-pruned once and saved as a pipeline artifact."""
    root = tmp_path_factory.mktemp("pruned")
    (root / "prune_test_usernet.py").write_text(USER_NET)
    results = {}
    for name, (_, params, exporter) in CASES.items():
        torch.manual_seed(0)
        build = lambda name=name: build_model(_spec(name), root)  # noqa: E731
        original = build().eval()
        module, details = prune_channels(original, SHAPE, channel(**params))
        check_reloadable(module, build)
        directory = root / name
        directory.mkdir()
        save_artifact(Artifact(kind="torch", input_shape=SHAPE, id=name, module=module), directory)
        sample = torch.randn(3, *SHAPE[1:], generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            torch.save({"input": sample, "output": module(sample), "grouped": _grouped(module)},
                       directory / "expected.pt")
        results[name] = SimpleNamespace(original=original, module=module, details=details, params=params,
                                        exporter=exporter, directory=directory, root=root)
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_channel_pruning_removes_the_asked_macs(pruned, name):
    case = pruned[name]
    base, after = torch_macs(case.original, SHAPE), torch_macs(case.module, SHAPE)
    if "target_macs" in case.params:  # at or below the target, and not far below it
        assert 0.3 * base < after <= 0.5 * base
    else:  # half the channels of conv after conv: about a quarter of the MACs
        assert after < 0.35 * base
    details = case.details
    assert details["effect"] == "removed" and details["after"]["macs"] == after
    assert details["after"]["params_total"] < details["before"]["params_total"]
    assert details["after"]["state_dict_bytes"] < details["before"]["state_dict_bytes"]
    assert any(before > now for before, now in details["widths"].values())
    with torch.no_grad():
        assert case.module(torch.randn(2, *SHAPE[1:])).shape == (2, 10)
    # Depthwise convolutions stay depthwise; grouped ones keep their groups.
    before_groups, after_groups = _grouped(case.original), _grouped(case.module)
    assert before_groups.keys() == after_groups.keys()
    for layer, (groups, channels) in before_groups.items():
        now_groups, now_channels = after_groups[layer]
        assert now_groups == (now_channels if groups == channels else groups)


@pytest.mark.parametrize("name", list(CASES))
def test_channel_pruned_model_exports_with_parity(pruned, name):
    case = pruned[name]
    path = case.directory / "model.onnx"
    opset = 18 if case.exporter == "dynamo" else 17
    export_onnx(case.module, SHAPE, path, opset=opset, exporter=case.exporter, dynamic_batch=True,
                pass_name="test", step=0)
    images = torch.randn(8, *SHAPE[1:], generator=torch.Generator().manual_seed(2))
    parity = check_parity(case.module, path, images, atol=1e-4, rtol=1e-3, pass_name="test", step=0)
    assert parity["top1_agreement"] == 1.0


RELOAD = """
import json, sys
from pathlib import Path
import torch
from modelzip.artifacts import load_artifact
from modelzip.recipe import ModelSpec
from modelzip.sources.models import build_model

root, specs = Path(sys.argv[1]), json.loads(sys.argv[2])
for name, spec in specs.items():
    build = lambda: build_model(ModelSpec(**spec), root)
    artifact = load_artifact(root / name, build)
    expected = torch.load(root / name / "expected.pt", weights_only=True)
    with torch.no_grad():
        diff = (artifact.module(expected["input"]) - expected["output"]).abs().max().item()
    grouped = {n: (m.groups, m.in_channels) for n, m in artifact.module.named_modules()
               if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    print(json.dumps({"name": name, "diff": diff,
                      "groups_kept": grouped == {k: tuple(v) for k, v in expected["grouped"].items()}}))
"""


def test_pruned_artifacts_reload_in_a_fresh_process(pruned):
    root = next(iter(pruned.values())).root
    specs = {name: _spec(name).model_dump(mode="json") for name in pruned}
    run = subprocess.run([sys.executable, "-c", RELOAD, str(root), json.dumps(specs)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["name"] for r in results] == list(CASES)
    for result in results:
        assert result["diff"] < 1e-5 and result["groups_kept"], result


# ----------------------------------------------------------------- channel: options and failures


def test_iterative_steps_and_rounding():
    torch.manual_seed(0)
    model = fashion_cnn().eval()
    _, one = prune_channels(model, SHAPE, channel(ratio=0.5))
    _, three = prune_channels(model, SHAPE, channel(ratio=0.5, steps=3))
    assert three["widths"] == one["widths"] == {"features.0": [32, 16], "features.4": [64, 32],
                                                 "classifier.1": [256, 128], "classifier.4": [10, 10]}
    # 40% of 32/64/256 leaves 19/38/153 channels; rounded down to multiples of 8.
    _, rounded = prune_channels(model, SHAPE, channel(ratio=0.4, round_to=8))
    assert [after for _, after in rounded["widths"].values()] == [16, 32, 152, 10]


def test_ignore_and_global_allocation():
    torch.manual_seed(0)
    model = fashion_cnn().eval()
    _, details = prune_channels(model, SHAPE, channel(ratio=0.5, ignore=("features",)))
    assert details["widths"]["features.0"] == [32, 32] and details["widths"]["features.4"] == [64, 64]
    assert details["widths"]["classifier.1"] == [256, 128]
    assert details["ignored"] == ["features.0", "features.4"] and details["always_kept"] == ["classifier.4"]
    # One ranking across layers: half of all channels go, but not half of each layer's.
    _, spread = prune_channels(model, SHAPE, channel(ratio=0.5, allocation="global"))
    kept = [after / before for before, after in spread["widths"].values() if before != after]
    assert sum(b - a for b, a in spread["widths"].values()) == (32 + 64 + 256) // 2
    assert max(kept) - min(kept) > 0.05


def test_verification_names_the_layer_a_misread_graph_breaks():
    """The check behind "never a silent wrong model" fails when kept channels are mixed up."""
    from modelzip.pruning.channel import _example, _prune_at
    from modelzip.pruning.verify import first_divergence, masked_original

    torch.manual_seed(0)
    original = fashion_cnn().eval()
    attempt = _prune_at(original, _example(original, SHAPE), 0.5, channel(ratio=0.5),
                        {"classifier.4"}, None, 0, print)
    masked, kept = masked_original(original, attempt.history)
    sample = torch.randn(2, *SHAPE[1:])
    assert first_divergence(attempt.module, masked, sample, kept) is None
    with torch.no_grad():  # as if the graph had fed features.4 its inputs 0 and 1 swapped
        weight = attempt.module.features[4].weight
        weight[:, [0, 1]] = weight[:, [1, 0]]
    layer, diff = first_divergence(attempt.module, masked, sample, kept)
    assert layer == "features.4" and diff > 1e-3


def test_taylor_and_random_importance_use_seeded_data():
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=4).eval()
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, *SHAPE[1:], generator=generator),
             torch.randint(0, 4, (16,), generator=generator)) for _ in range(2)]
    config = PruneConfig(method="channel", ratio=0.5, importance="taylor", taylor_batches=2)
    taylor, _ = prune_channels(model, SHAPE, channel_settings(config), batches=lambda: iter(data))
    assert all(p.grad is None for p in taylor.parameters())
    with pytest.raises(PruneFailure, match="taylor needs training batches"):
        prune_channels(model, SHAPE, channel_settings(config), batches=lambda: iter([]))
    random_config = PruneConfig(method="channel", ratio=0.5, importance="random")
    first, _ = prune_channels(model, SHAPE, channel_settings(random_config), seed=3)
    again, _ = prune_channels(model, SHAPE, channel_settings(random_config), seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


class Shuffled(nn.Module):
    """A channel shuffle (view/transpose): Torch-Pruning feeds `b` the wrong channels."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.a(x)
        b, c, h, w = x.shape
        x = x.view(b, 4, c // 4, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.head(self.b(x).mean((2, 3)))


class HardCoded(nn.Module):
    """A view with a constant channel count: the pruned model cannot run."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Conv2d(1, 16, 3, padding=1, stride=4), nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        return self.head(self.a(x).view(-1, 16 * 7 * 7))


class GroupNormed(nn.Module):
    """GroupNorm: Torch-Pruning can prune it, modelzip cannot rebuild it on reload."""

    def __init__(self):
        super().__init__()
        self.a, self.norm = nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.b, self.head = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.b(self.norm(self.a(x))).mean((2, 3)))


def _context(step: int = 2) -> SimpleNamespace:
    recipe = SimpleNamespace(data=SimpleNamespace(batch_size=8), evaluation=SimpleNamespace(threads=1))
    return SimpleNamespace(step=step, seed=0, log=lambda message: None, details={}, recipe=recipe,
                           record=lambda **items: None, data=None, build_module=None)


@pytest.mark.parametrize("cls, words, suggested", [
    (Shuffled, "layer 'b' computes something other", "['a']"),
    (HardCoded, "fails its forward pass", "['a']"),
    (GroupNormed, "'norm' (GroupNorm)", "['a']"),
])
def test_graphs_torch_pruning_misreads_fail_naming_the_layer(cls, words, suggested):
    artifact = Artifact(kind="torch", input_shape=SHAPE, id="x", module=cls().eval())
    with pytest.raises(PassError) as info:
        PrunePass().run(artifact, PruneConfig(method="channel", ratio=0.5, round_to=None), _context())
    error = info.value
    assert error.pass_name == "prune" and error.step == 2 and error.exit_code == 3
    assert words in error.what and suggested in error.fix and "ignore" in error.fix
    # Ignoring the suggested layer gives a correct (if smaller) pruning, or nothing to prune.
    config = PruneConfig(method="channel", ratio=0.5, ignore=(suggested.strip("[]'"),))
    try:
        module, _ = prune_channels(cls().eval(), SHAPE, channel_settings(config))
    except PruneFailure as failure:
        assert "nothing was pruned" in failure.what


def test_unknown_ignore_pattern_is_an_error():
    with pytest.raises(PruneFailure, match="cover no Conv/Linear") as info:
        prune_channels(fashion_cnn(), SHAPE, channel(ratio=0.5, ignore=("featurez.*",)))
    assert info.value.got == ["featurez.*"]


# ----------------------------------------------------------------- magnitude


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_magnitude_global_sparsity_is_exact_and_leaves_plain_weights():
    torch.manual_seed(0)
    model = fashion_cnn().eval()
    module, details = prune_magnitude(model, SHAPE, sparsity=0.9, scope="global", layers={}, ignore=())
    weights = _weights(module)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros == round(0.9 * total) == details["weights_zeroed"]
    assert details["effect"] == "masked" and "no speedup" in details["summary"]
    assert details["after"]["macs"] == details["before"]["macs"]
    assert details["after"]["params_nonzero"] < 0.15 * details["before"]["params_nonzero"]
    assert details["after"]["state_dict_zip_bytes"] < 0.3 * details["before"]["state_dict_zip_bytes"]
    assert list(module.state_dict()) == list(model.state_dict())  # no weight_orig / weight_mask
    original = model.state_dict()
    for key, value in module.state_dict().items():  # biases and BatchNorm untouched
        if not key.endswith("weight") or key.startswith("features.1") or key.startswith("features.5"):
            assert torch.equal(value, original[key]), key
    assert int((_weights(model)["features.0"] == 0).sum()) == 0  # the input model is not touched


def test_lamp_scores_order_a_layer_by_magnitude_and_give_its_largest_weight_one():
    weight = torch.tensor([[0.5, -2.0], [1.0, 0.0]])
    scores = lamp_scores(weight)
    # ascending w^2 = 0, 0.25, 1, 4; each over the sum of itself and the larger ones
    torch.testing.assert_close(scores, torch.tensor([0.25 / 5.25, 1.0, 1 / 5, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("scope, emptied", [("global", True), ("lamp", False)])
def test_lamp_does_not_empty_a_layer_of_small_weights(scope, emptied):
    """Two layers, one with weights 100x smaller (a wide fan-in's init scale): one raw |w| threshold
    at 60% takes all of it; LAMP's layer-normalized scores leave it some weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
    with torch.no_grad():
        model[1].weight.mul_(0.01)
    module, details = prune_magnitude(model, (1, 32), sparsity=0.6, scope=scope, layers={}, ignore=())
    assert details["weights_zeroed"] == round(0.6 * 2 * 32 * 32)
    assert (details["layer_sparsity"]["1"] == 1.0) is emptied


def test_magnitude_layer_scope_overrides_and_ignore():
    torch.manual_seed(0)
    model = fashion_cnn().eval()
    overrides = {"features.0": 0.25, "features.*": 0.5}  # the first matching pattern wins
    module, details = prune_magnitude(model, SHAPE, sparsity=0.7, scope="layer", layers=overrides,
                                      ignore=("classifier.4",))
    weights = _weights(module)
    for name, expected in {"features.0": 0.25, "features.4": 0.5, "classifier.1": 0.7}.items():
        n = weights[name].numel()
        assert int((weights[name] == 0).sum()) == round(expected * n), name
        assert details["layer_sparsity"][name] == pytest.approx(round(expected * n) / n, abs=1e-6)
    assert torch.equal(weights["classifier.4"], _weights(model)["classifier.4"])
    assert details["ignored"] == ["classifier.4"]
    with pytest.raises(PruneFailure, match="`layers` pattern"):
        prune_magnitude(model, SHAPE, sparsity=0.5, scope="layer", layers={"nothing.*": 0.5}, ignore=())


def test_magnitude_zeros_reach_the_onnx_file(tmp_path):
    torch.manual_seed(0)
    model = fashion_cnn().eval()
    module, _ = prune_magnitude(model, SHAPE, sparsity=0.9, scope="global", layers={}, ignore=())
    sizes = {}
    for label, net in (("dense", model), ("sparse", module)):
        path = tmp_path / f"{label}.onnx"
        export_onnx(net, SHAPE, path, opset=18, exporter="dynamo", dynamic_batch=True, pass_name="t", step=0)
        sizes[label] = (path.stat().st_size, zip_bytes(path))
    assert sizes["sparse"][0] == pytest.approx(sizes["dense"][0], rel=0.01)  # dense shapes: same raw size
    assert sizes["sparse"][1] < 0.25 * sizes["dense"][1]


# ----------------------------------------------------------------- config validation


def _registry() -> PassRegistry:
    return PassRegistry.from_entry_points()


RECIPE = synthetic_recipe("PASSES", name="prune-test", seed=False)


def _recipe(recipe_file, passes: str):
    return recipe_file(RECIPE.replace("PASSES", textwrap.indent(textwrap.dedent(passes).strip(), "  ")))


def test_config_mistakes_are_recipe_errors_with_key_paths(recipe_file):
    path = _recipe(recipe_file, """
        - prune: {method: channel, ratio: 0.5, target_macs: 0.5}
        - prune: {method: magnitude, sparsity: 1.5}
        - prune: {method: magnitude}
        - prune: {method: channel}
        - prune: {method: magnitude, sparsity: 0.5, ratio: 0.5}
        - prune: {method: channel, ratio: 0.5, taylor_batches: 8}
        - prune: {method: magnitude, sparsity: 0.5, layers: {"features.*": 2}}
        - prune: {method: magnitude, sparsity: 0.5, scope: layr}
    """)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registry=_registry())
    found = {p.path: p for p in info.value.problems}
    assert set(found) == {
        "passes[0].prune.target_macs", "passes[1].prune.sparsity", "passes[2].prune.sparsity",
        "passes[3].prune", "passes[4].prune.ratio", "passes[5].prune.taylor_batches",
        "passes[6].prune.layers.features.*", "passes[7].prune.scope"}
    assert "not both" in found["passes[0].prune.target_macs"].message
    assert "less than 1" in found["passes[1].prune.sparsity"].message
    assert "needs `sparsity`" in found["passes[2].prune.sparsity"].message
    assert "needs `ratio`" in found["passes[3].prune"].message
    assert ("`ratio` applies only to method: channel, not method: magnitude; remove it"
            in found["passes[4].prune.ratio"].message)
    assert ("applies only to method: channel and importance: taylor, not importance: l1"
            in found["passes[5].prune.taylor_batches"].message)
    assert all(p.line is not None for p in info.value.problems)


def test_resolved_config_reloads():
    """recipe.resolved.yaml writes every field: defaults of the other method must load back."""
    for config in (PruneConfig(method="channel", target_macs=0.5, importance="taylor"),
                   PruneConfig(method="magnitude", sparsity=0.9, scope="layer", layers={"a*": 0.5})):
        assert PruneConfig.model_validate(config.model_dump(mode="json")) == config


def test_pass_module_imports_no_torch():
    code = ("import sys, modelzip.passes.prune; "
            "print(sorted(m for m in ('torch', 'torch_pruning') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr


# ----------------------------------------------------------------- end to end


def test_recipe_prunes_then_zeroes_then_exports(recipe_file):
    torch.manual_seed(0)
    path = _recipe(recipe_file, """
        - prune: {method: channel, target_macs: 0.5, round_to: null}  # tiny_cnn: 8/16 wide
        - prune: {method: magnitude, sparsity: 0.5, scope: layer}
        - export: {}
    """)
    registry = _registry()
    result = run_recipe(load_recipe(path, registry=registry), RunOptions(registry=registry))
    channel, magnitude, export, _optimize = result.report["steps"]
    details = channel["details"]
    assert details["effect"] == "removed" and details["method"] == "channel"
    assert details["after"]["macs"] <= 0.5 * details["before"]["macs"]
    assert channel["metrics"]["macs"] == details["after"]["macs"]  # the reloaded artifact is the pruned one
    assert channel["metrics"]["params_total"] == details["after"]["params_total"]
    assert set(details["widths"]) == {"features.0", "features.4", "classifier.1"}
    assert magnitude["details"]["effect"] == "masked"
    assert magnitude["details"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert magnitude["metrics"]["macs"] == channel["metrics"]["macs"]
    assert magnitude["metrics"]["params_nonzero"] < 0.6 * channel["metrics"]["params_nonzero"]
    assert export["kind"] == "onnx" and (result.output_dir / "model.onnx").is_file()
    markdown = (result.output_dir / "report.md").read_text()
    assert "kept " in markdown and "masked: dense shapes" in markdown
