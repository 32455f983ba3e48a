"""Input mistakes are the user's (exit 2, naming the key to change), found before any pass runs:
the preflight on one batch, file-system errors, and both through `modelzip run`."""
from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from modelzip import load_recipe, run_recipe
from modelzip.cli import app
from modelzip.errors import InputError, input_error_from_os
from modelzip.preflight import PreflightResult, preflight
from modelzip.recipe import DataSpec, ModelSpec
from modelzip.sources.data import load_data
from modelzip.zoo import tiny_cnn
from tests.conftest import synthetic_recipe

SHAPE = (1, 1, 28, 28)
TINY = synthetic_recipe("  - export: {}", checkpoint="tiny.pt")
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic 1x28x28 images in 4 classes (labels 0..3), batch size 64."""
    spec = DataSpec(dataset="modelzip.testing:synthetic_dataset", args={"train": 64, "eval": 32},
                    batch_size=64, val_samples=0)
    return load_data(spec, base_dir=tmp_path_factory.mktemp("data"), seed=0)


def spec(**kwargs) -> ModelSpec:
    return ModelSpec(**{"source": "modelzip.zoo:tiny_cnn", "args": {"num_classes": 4}, "input_shape": SHAPE,
                        **kwargs})


def check(module: nn.Module, data, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        preflight(module, data, spec(**kwargs))
    assert info.value.exit_code == 2 and info.value.fix
    return info.value


class Lambda(nn.Module):
    """A model whose forward is ``fn`` (plus one parameter, so it has weights)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.fn(x)


# --------------------------------------------------------------------------- what passes


def test_a_fitting_model_passes_and_keeps_its_mode(data):
    model = tiny_cnn(num_classes=4).train()
    result = preflight(model, data, spec())
    assert result == PreflightResult(sample_shape=(1, 28, 28), batch=8, output_classes=4, label_classes=4)
    assert model.training  # evaluated in eval mode, handed back as it came


def test_more_outputs_than_classes_is_fine(data):
    assert preflight(tiny_cnn(num_classes=10), data, spec(args={"num_classes": 10})).output_classes == 10


# --------------------------------------------------------------------------- the input shape


def test_input_shape_that_does_not_match_the_data(data):
    error = check(tiny_cnn(num_classes=4), data, input_shape=(1, 3, 32, 32))
    assert error.where == "model.input_shape"
    assert "(1, 28, 28)" in error.got and "[1, 1, 28, 28]" in error.fix


def test_model_taking_other_channels_suggests_in_channels(data):
    stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    error = check(stem, data)
    assert error.where == "model.in_channels" and "model.in_channels: 1" in error.fix
    assert "(8, 1, 28, 28)" in error.got and "RuntimeError" in error.got


def test_model_taking_another_image_size_names_the_source(data):
    error = check(nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 4)), data)
    assert error.where == "model.source" and "(8, 1, 28, 28)" in error.got
    assert "[1, 1, 28, 28]" in error.expected


def _raise(exc: BaseException):
    raise exc


@pytest.mark.parametrize(("exc", "got"), [
    (ValueError("unsupported input"), "ValueError: unsupported input"),
    (SystemExit(1), "SystemExit: sys.exit(1) was called"),
])
def test_forward_that_raises_is_an_input_error(data, exc, got):
    error = check(Lambda(lambda x: _raise(exc)), data)
    assert error.where == "model.source" and got in error.got


def test_forward_keyboard_interrupt_passes_through(data):
    with pytest.raises(KeyboardInterrupt):
        preflight(Lambda(lambda x: _raise(KeyboardInterrupt())), data, spec())


# --------------------------------------------------------------------------- the output


@pytest.mark.parametrize(("fn", "got"), [
    (lambda x: {"logits": x.flatten(1)[:, :4]}, "a dict"),
    (lambda x: x, "shape (8, 1, 28, 28)"),
    (lambda x: x.flatten(1)[:, :4].long(), "torch.int64"),
    (lambda x: x.flatten(1)[:1, :4], "shape (1, 4) for 8 images"),
])
def test_output_that_is_not_batch_by_classes_logits(data, fn, got):
    error = check(Lambda(fn), data)
    assert error.where == "model.source" and got in error.got


def test_fewer_outputs_than_classes_names_num_classes(data):
    error = check(tiny_cnn(num_classes=2), data, args={"num_classes": 2}, checkpoint="two_classes.pt")
    assert error.where == "model.args" and "model.args.num_classes: 4" in error.fix
    assert "trained on these 4 classes" in error.fix and "2 outputs" in error.what


def test_non_finite_output_names_the_checkpoint_or_source(data):
    def overflow(x):
        return x.flatten(1)[:, :4] / 0.0

    assert check(Lambda(overflow), data).where == "model.source"
    assert check(Lambda(overflow), data, checkpoint="c.pt").where == "model.checkpoint"


# --------------------------------------------------------------------------- weights and data


def test_nan_weights_name_the_first_tensors(data):
    model = tiny_cnn(num_classes=4)
    with torch.no_grad():
        model.classifier[1].weight[0, 0] = float("nan")
        model.classifier[1].bias[1] = float("inf")
    error = check(model, data, checkpoint="diverged.pt")
    assert error.where == "model.checkpoint"
    assert "classifier.1.weight (1 NaN, 0 inf" in error.got and "classifier.1.bias (0 NaN, 1 inf" in error.got


def test_huge_but_finite_weights_pass(data):
    """Their sum overflows to inf: the fast path must not call that NaN."""
    model = Lambda(lambda x: x.flatten(1)[:, :4])
    model.weight = nn.Parameter(torch.full((4,), 3e38))
    assert preflight(model, data, spec()).output_classes == 4


def test_data_with_nan_images_or_labels_the_model_cannot_output(tmp_path):
    (tmp_path / "bad_data_module.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "def nan_images():\n"
        "    x = torch.zeros(8, 1, 28, 28); x[0, 0, 0, 0] = float('nan')\n"
        "    y = torch.zeros(8, dtype=torch.long)\n"
        "    return TensorDataset(x, y), TensorDataset(x, y)\n"
        "def negative_labels():\n"
        "    x = torch.zeros(8, 1, 28, 28)\n"
        "    return TensorDataset(x, torch.arange(8) % 2), TensorDataset(x, torch.arange(8) - 1)\n"
        "def label_beyond_train():\n"
        "    x = torch.zeros(8, 1, 28, 28)\n"
        "    return TensorDataset(x, torch.arange(8) % 2), TensorDataset(x, torch.arange(8) % 6)\n")
    cases = (("nan_images", "data.dataset", "NaN or inf"), ("negative_labels", "data.dataset", "label -1"),
             ("label_beyond_train", "model.args", "6 classes"))  # labels 0..5 need 6 outputs
    for factory, where, fragment in cases:
        bundle = load_data(DataSpec(dataset=f"bad_data_module:{factory}", val_samples=0), base_dir=tmp_path,
                           seed=0)
        error = check(tiny_cnn(num_classes=4), bundle)
        assert error.where == where and fragment in str(error)


# --------------------------------------------------------------------------- through the pipeline


@pytest.fixture
def tiny_recipe(tiny_checkpoint, recipe_file):
    return recipe_file(TINY)


def run_error(recipe_path, *overrides: str) -> InputError:
    with pytest.raises(InputError) as info:
        run_recipe(load_recipe(recipe_path, list(overrides)))
    return info.value


def test_nan_checkpoint_is_caught_before_the_baseline(tiny_recipe, tmp_path):
    """It used to surface as an ONNX parity failure (exit 3) blaming the export tolerance."""
    state = {k: v.fill_(float("nan")) if v.is_floating_point() else v
             for k, v in tiny_cnn(num_classes=4).state_dict().items()}
    torch.save(state, tmp_path / "tiny.pt")
    error = run_error(tiny_recipe)
    assert error.where == "model.checkpoint" and "features.0.weight" in error.got
    assert not (tmp_path / "out" / ".cache" / "steps").exists()  # no step ran


def test_wrong_num_classes_through_the_pipeline(tmp_path, recipe_file):
    """It used to run to the end (exit 0) with a model that can never predict classes 2 and 3."""
    path = recipe_file(synthetic_recipe("  - export: {}", model_args="{num_classes: 2}"))
    assert run_error(path).where == "model.args"


USER_MODEL = """
def build():
    raise RuntimeError("no GPU driver")
"""


def test_cli_reports_user_mistakes_with_exit_2(tiny_recipe, tmp_path):
    """Through `modelzip run`: no "internal error", and shapes in brackets survive the console."""
    run = ["run", str(tiny_recipe), "--quiet"]
    result = runner.invoke(app, [*run, "--set", "model.input_shape=[1, 3, 32, 32]"])
    assert result.exit_code == 2, result.output
    assert "model.input_shape" in result.output and "[batch, 1, 28, 28]" in result.output
    (tmp_path / "failing_factory_cli.py").write_text(USER_MODEL)
    factory = ["--set", "model.source=failing_factory_cli:build", "--set", "model.args={}"]
    result = runner.invoke(app, [*run, *factory])
    assert result.exit_code == 2, result.output
    assert "model.source" in result.output and "no GPU driver" in result.output
    assert "internal error" not in result.output


# --------------------------------------------------------------------------- the distillation teacher


def test_teacher_checkpoint_of_random_bytes(tmp_path):
    from modelzip.passes._training import _teacher

    (tmp_path / "teacher.pt").write_bytes(bytes(range(256)) * 4)
    ctx = SimpleNamespace(step=2, recipe=SimpleNamespace(resolve=lambda p: tmp_path / p),
                          build_module=lambda: tiny_cnn(num_classes=4))
    with pytest.raises(InputError, match="not a torch checkpoint") as info:
        _teacher("teacher.pt", None, ctx, "finetune")
    assert info.value.where == "passes[2].finetune.distill.teacher" and "trust" not in info.value.fix


# --------------------------------------------------------------------------- file-system errors


@pytest.mark.parametrize(("code", "fix"), [
    (errno.EACCES, "choose a directory you can write"),
    (errno.EPERM, "choose a directory you can write"),
    (errno.EROFS, "choose a directory you can write"),
    (errno.ENOSPC, "free disk space"),
    (errno.EDQUOT, "quota"),
    (errno.ENAMETOOLONG, "shorter path"),
    (errno.ENOTDIR, "remove that file"),
    (errno.EEXIST, "--out name a directory"),
    (errno.EISDIR, "remove the directory"),
])
def test_os_errors_that_are_the_users_become_input_errors(code, fix):
    error = input_error_from_os(OSError(code, "message from the OS", "/runs/out/model.onnx"))
    assert isinstance(error, InputError) and error.exit_code == 2
    assert error.where == "/runs/out/model.onnx" and fix in error.fix and f"[Errno {code}]" in error.got


def test_os_error_mapping_leaves_others_alone():
    unnamed = input_error_from_os(OSError(errno.ENOSPC, "No space left on device"))  # write() names no file
    assert unnamed.where is None and "free disk space" in unnamed.fix
    assert input_error_from_os(OSError(errno.ENOSPC, "x", "a"), where="output").where == "output"
    assert input_error_from_os(OSError(errno.ECONNRESET, "reset")) is None
    assert input_error_from_os(ValueError("not an OSError")) is None


def test_out_that_is_an_existing_file_exits_2(tiny_recipe, tmp_path):
    (tmp_path / "taken").write_text("a file, not a directory")
    result = runner.invoke(app, ["run", str(tiny_recipe), "--quiet", "--out", str(tmp_path / "taken")])
    assert result.exit_code == 2, result.output
    assert str(tmp_path / "taken") in result.output and "a file is in the way" in result.output
    assert "internal error" not in result.output


def test_full_disk_exits_2(tiny_recipe, monkeypatch):
    """A full disk during the run's first write (simulated): free space, not a bug report."""
    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("modelzip.run_folder.write_text", full)
    result = runner.invoke(app, ["run", str(tiny_recipe), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "free disk space" in result.output and "recipe.resolved.yaml" in result.output
