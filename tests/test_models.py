"""Model sources: torchvision with a 1-channel stem, user factories (and their failures), checkpoints."""
from __future__ import annotations

import errno
import os
import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from modelzip.errors import InputError
from modelzip.recipe import ModelSpec
from modelzip.sources import models
from modelzip.sources.models import build_model, load_input_model, model_fingerprint, read_state_dict
from modelzip.zoo import tiny_cnn

SHAPE = (1, 1, 28, 28)


def spec(**kwargs) -> ModelSpec:
    return ModelSpec(**{"source": "modelzip.zoo:tiny_cnn", "input_shape": SHAPE, **kwargs})


def test_torchvision_model_with_grayscale_stem():
    model = build_model(spec(source="torchvision:resnet18", args={"num_classes": 10}, in_channels=1), Path("."))
    assert model.conv1.in_channels == 1
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_stem_adaptation_keeps_luminance_response():
    rgb = build_model(spec(source="torchvision:resnet18", args={"num_classes": 10}), Path("."))
    gray = build_model(spec(source="torchvision:resnet18", args={"num_classes": 10}, in_channels=1), Path("."))
    gray.load_state_dict({k: v for k, v in rgb.state_dict().items() if k != "conv1.weight"}, strict=False)
    with torch.no_grad():
        gray.conv1.weight.copy_(rgb.conv1.weight.mean(1, keepdim=True))
        x = torch.rand(1, 1, 32, 32)
        expected = rgb.conv1(x.expand(1, 3, 32, 32)) / 3
        assert torch.allclose(gray.conv1(x), expected, atol=1e-5)


def test_unknown_torchvision_model_suggests():
    with pytest.raises(InputError) as info:
        build_model(spec(source="torchvision:resnet81"), Path("."))
    assert "resnet18" in info.value.fix


def test_factory_argument_errors_are_input_errors():
    with pytest.raises(InputError) as info:
        build_model(spec(args={"classes": 3}), Path("."))
    assert info.value.where == "model.args"


def test_missing_factory_lists_choices():
    with pytest.raises(InputError) as info:
        build_model(spec(source="modelzip.zoo:tiny_cn"), Path("."))
    assert "tiny_cnn" in info.value.fix


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd},
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
])
def test_checkpoint_wrappers_load(tmp_path, wrap):
    source = tiny_cnn()
    torch.save(wrap(source.state_dict()), tmp_path / "c.pt")
    model = load_input_model(spec(checkpoint="c.pt"), tmp_path)
    x = torch.randn(3, *SHAPE[1:])
    assert torch.equal(model(x), source.eval()(x))


def test_fingerprint_follows_checkpoint_content(tmp_path):
    torch.save(tiny_cnn().state_dict(), tmp_path / "c.pt")
    first = model_fingerprint(spec(checkpoint="c.pt"), tmp_path)
    assert model_fingerprint(spec(checkpoint="c.pt"), tmp_path) == first
    torch.save(tiny_cnn().state_dict(), tmp_path / "c.pt")  # new random weights
    assert model_fingerprint(spec(checkpoint="c.pt"), tmp_path) != first


# --------------------------------------------------------------------------- user code that fails


USER_MODELS = '''
import sys
import torch.nn as nn

def raises():
    raise RuntimeError("no GPU driver")

def exits():
    sys.exit(3)

def interrupted():
    raise KeyboardInterrupt

def typo_inside(classes=4):
    return nn.Linear(4, clases)

def ok(classes=4):
    return nn.Linear(4, classes)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write ``code`` beside the 'recipe' (tmp_path) as a module unique to this test; return its name."""
    def write(code: str, stem: str = "models") -> str:
        name = f"user_{stem}_{abs(hash(str(tmp_path)))}"
        (tmp_path / f"{name}.py").write_text(code)
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name
    return write


@pytest.mark.parametrize(("factory", "got"), [
    ("raises", "RuntimeError: no GPU driver"),
    ("exits", "SystemExit: sys.exit(3) was called"),
    ("typo_inside", "NameError: name 'clases' is not defined"),  # not blamed on model.args
])
def test_factory_exceptions_are_input_errors_naming_the_source(tmp_path, user_module, factory, got):
    name = user_module(USER_MODELS)
    with pytest.raises(InputError) as info:
        build_model(spec(source=f"{name}:{factory}"), tmp_path)
    assert info.value.where == "model.source" and info.value.exit_code == 2
    assert got in info.value.got and f"{name}.py:" in info.value.got  # where in the user's file
    assert info.value.fix


def test_factory_keyboard_interrupt_passes_through(tmp_path, user_module):
    name = user_module(USER_MODELS)
    with pytest.raises(KeyboardInterrupt):
        build_model(spec(source=f"{name}:interrupted"), tmp_path)


def test_unknown_factory_argument_is_still_model_args(tmp_path, user_module):
    name = user_module(USER_MODELS)
    with pytest.raises(InputError) as info:
        build_model(spec(source=f"{name}:ok", args={"num_classes": 4}), tmp_path)
    assert info.value.where == "model.args" and "num_classes" in info.value.what and "does not take" in info.value.what


@pytest.mark.parametrize(("code", "got", "fix"), [
    ("def build(:\n    pass\n", "SyntaxError", "fix the error in"),
    ("raise RuntimeError('module code failed')\n", "RuntimeError: module code failed", "fix the error in"),
    ("import sys\nsys.exit('no config')\n", "SystemExit", "fix the error in"),
    ("import not_a_real_package_xyz\n", "No module named 'not_a_real_package_xyz'",
     "install 'not_a_real_package_xyz'"),
])
def test_module_that_fails_to_import_is_an_input_error(tmp_path, user_module, code, got, fix):
    name = user_module(code)
    with pytest.raises(InputError) as info:
        build_model(spec(source=f"{name}:build"), tmp_path)
    assert info.value.where == "model.source" and info.value.exit_code == 2
    assert "importing module" in info.value.what and got in info.value.got and fix in info.value.fix


def test_absent_module_still_suggests_the_spelling(tmp_path):
    with pytest.raises(InputError) as info:
        build_model(spec(source="no_such_module_xyz:build"), tmp_path)
    assert info.value.where == "model.source" and "check the spelling" in info.value.fix


# --------------------------------------------------------------------------- checkpoint files


def _zip_without_torch(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")


def _saved(path: Path, **kwargs) -> bytes:
    torch.save(tiny_cnn().state_dict(), path, **kwargs)
    return path.read_bytes()


@pytest.mark.parametrize(("make", "what", "got"), [
    (lambda p: p.write_bytes(os.urandom(4096)), "not a torch checkpoint", "unknown content"),
    (lambda p: p.write_bytes(b""), "not a torch checkpoint", "an empty file"),
    (lambda p: p.write_text("step,loss\n1,0.5\n"), "not a torch checkpoint", "unknown content"),
    (lambda p: p.write_bytes(_saved(p)[:3000]), "not a torch checkpoint", "truncated"),
    (_zip_without_torch, "not a torch checkpoint", "without data.pkl"),
    (lambda p: p.write_bytes(_saved(p, _use_new_zipfile_serialization=False)[:300]), "damaged", "Error"),
    (lambda p: p.write_bytes(pickle.dumps({"w": [1.0]})), "not a torch checkpoint", "unknown content"),
])
def test_files_torch_cannot_load_are_input_errors(tmp_path, make, what, got):
    make(tmp_path / "c.pt")
    with pytest.raises(InputError) as info:
        load_input_model(spec(checkpoint="c.pt"), tmp_path)
    assert info.value.where == "model.checkpoint" and info.value.exit_code == 2
    assert what in info.value.what and got in info.value.got and str(tmp_path / "c.pt") in info.value.got
    assert "trust_checkpoint" not in (info.value.fix or "")  # not the misleading "it pickles objects"


def test_legacy_torch_format_still_loads(tmp_path):
    source = tiny_cnn()
    torch.save(source.state_dict(), tmp_path / "c.pt", _use_new_zipfile_serialization=False)
    model = load_input_model(spec(checkpoint="c.pt"), tmp_path)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


def test_checkpoint_directory_names_files_inside(tmp_path):
    (tmp_path / "run").mkdir()
    torch.save(tiny_cnn().state_dict(), tmp_path / "run" / "best.pt")
    with pytest.raises(InputError) as info:
        load_input_model(spec(checkpoint="run"), tmp_path)
    assert info.value.where == "model.checkpoint" and "directory" in info.value.what
    assert "best.pt" in info.value.fix


def test_unreadable_checkpoint_is_an_input_error(tmp_path, monkeypatch):
    """Tests run as root, where chmod blocks nothing: the denial is simulated."""
    torch.save(tiny_cnn().state_dict(), tmp_path / "c.pt")

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(models, "open", denied, raising=False)  # shadows the builtin in that module
    with pytest.raises(InputError) as info:
        load_input_model(spec(checkpoint="c.pt"), tmp_path)
    assert info.value.where == "model.checkpoint" and "Permission denied" in info.value.what
    assert "permissions" in info.value.fix


def test_pickled_module_names_what_it_pickles(tmp_path):
    torch.save(tiny_cnn(), tmp_path / "c.pt")
    with pytest.raises(InputError) as info:
        load_input_model(spec(checkpoint="c.pt"), tmp_path)
    assert "pickles Python objects" in info.value.what
    assert "torch.nn.modules.container.Sequential" in info.value.got  # what it would have to unpickle
    assert "model.trust_checkpoint" in info.value.fix


def test_read_state_dict_for_other_keys_offers_no_trust(tmp_path):
    """The distillation teacher's loader: same checks, its own key, and no trust flag to suggest."""
    torch.save(tiny_cnn(), tmp_path / "t.pt")
    where = "passes[0].finetune.distill.teacher"
    with pytest.raises(InputError) as info:
        read_state_dict(tmp_path / "t.pt", where=where)
    assert info.value.where == where and "trust" not in info.value.fix
    (tmp_path / "t.pt").write_bytes(os.urandom(100))
    with pytest.raises(InputError, match="not a torch checkpoint") as info:
        read_state_dict(tmp_path / "t.pt", where=where)
    assert info.value.where == where
    torch.save({"state_dict": tiny_cnn().state_dict()}, tmp_path / "t.pt")
    assert set(read_state_dict(tmp_path / "t.pt", where=where)) == set(tiny_cnn().state_dict())
