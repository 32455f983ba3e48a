"""Model sources: the zoo, torchvision, and user factories named ``module:callable``.

Checkpoints are state_dicts loaded with ``weights_only=True``; a pickled module
loads only when the recipe says ``trust_checkpoint: true``.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import pickle
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip.cache import file_sha256
from modelzip.errors import InputError
from modelzip.recipe import ModelSpec
from modelzip.registry import suggest

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


@contextmanager
def _importable_from(directory: Path):
    """Let ``import`` find modules that sit beside the recipe, for this call only."""
    entry = str(Path(directory).resolve())
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def import_callable(ref: str, base_dir: Path, *, what: str, where: str) -> Callable[..., Any]:
    """Resolve ``"package.module:name"``; modules beside the recipe take precedence."""
    module_name, _, attr = ref.partition(":")
    with _importable_from(base_dir):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise InputError(
                f"cannot import module {module_name!r} for the {what}", where=where,
                got=f"{type(exc).__name__}: {exc}", expected="a module on sys.path or beside the recipe",
                fix=f"check the spelling, or put {module_name.replace('.', '/')}.py beside the recipe",
            ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        hint = suggest(attr, names)
        raise InputError(
            f"{module_name!r} has no callable {attr!r}", where=where, got=ref,
            expected=f"one of: {', '.join(names[:20])}",
            fix=hint or "name a function or class that builds the model",
        )
    return factory


def build_model(spec: ModelSpec, base_dir: Path) -> nn.Module:
    """Instantiate the architecture named by ``spec.source`` (weights untouched)."""
    prefix, _, name = spec.source.partition(":")
    factory = _torchvision_factory(name) if prefix == "torchvision" else import_callable(
        spec.source, base_dir, what="model", where="model.source")
    try:
        model = factory(**spec.args)
    except TypeError as exc:
        raise InputError(
            f"the model factory rejected its arguments: {exc}", where="model.args",
            got=spec.args, fix="match `model.args` to the factory's parameters",
        ) from exc
    if not isinstance(model, nn.Module):
        raise InputError("the model factory did not return a torch.nn.Module", where="model.source",
                         got=type(model).__name__, expected="torch.nn.Module")
    if spec.in_channels is not None:
        adapt_input_channels(model, spec.in_channels)
    return model


def _torchvision_factory(name: str) -> Callable[..., nn.Module]:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        hint = suggest(name, available)
        raise InputError(f"unknown torchvision model {name!r}", where="model.source",
                         got=name, expected="a name from torchvision.models.list_models()",
                         fix=hint or "see torchvision's model list")
    return lambda **kwargs: torchvision.models.get_model(name, **kwargs)


def adapt_input_channels(model: nn.Module, in_channels: int) -> None:
    """Replace the first Conv2d by one taking ``in_channels`` inputs.

    Existing weights are averaged over the old input channels and repeated, so
    an RGB stem turned grayscale still sees the same luminance response.
    """
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d):
            break
    else:
        raise InputError("`in_channels` needs a Conv2d in the model, and there is none",
                         where="model.in_channels", fix="remove `in_channels`")
    if conv.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, 1 if conv.groups == 1 else in_channels, conv.bias is not None,
                    conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(conv.weight.mean(dim=1, keepdim=True).expand_as(new.weight))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent_name, _, child = name.rpartition(".")
    (model.get_submodule(parent_name) if parent_name else model).add_module(child, new)


def load_input_model(spec: ModelSpec, base_dir: Path) -> nn.Module:
    """Build the architecture and load its checkpoint, if any; eval mode."""
    checkpoint = _resolve(spec.checkpoint, base_dir)
    if checkpoint is not None and spec.trust_checkpoint:
        loaded = _torch_load(checkpoint, weights_only=False)
        if isinstance(loaded, nn.Module):
            return loaded.eval()
    model = build_model(spec, base_dir)
    if checkpoint is not None:
        state = loaded if spec.trust_checkpoint else _torch_load(checkpoint, weights_only=True)
        load_state(model, _unwrap(state, checkpoint), checkpoint)
    return model.eval()


def _resolve(path: str | None, base_dir: Path) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if not p.is_file():
        raise InputError("checkpoint file not found", where="model.checkpoint", got=str(p),
                         expected="a state_dict saved with torch.save(model.state_dict(), path)",
                         fix="check the path (relative paths start at the recipe's directory)")
    return p


def _torch_load(path: Path, *, weights_only: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        raise InputError(
            "the checkpoint is not a plain state_dict (it pickles Python objects)",
            where="model.checkpoint", got=str(path),
            expected="torch.save(model.state_dict(), path)",
            fix="re-save the state_dict, or set `model.trust_checkpoint: true` if you trust the file "
                "(unpickling runs code from it)",
        ) from exc
    except (RuntimeError, OSError, EOFError) as exc:
        raise InputError(f"cannot read the checkpoint: {exc}", where="model.checkpoint",
                         got=str(path), expected="a file written by torch.save") from exc


def _unwrap(state: Any, path: Path) -> dict[str, torch.Tensor]:
    """Accept common wrappers ({'state_dict': ...}) and DDP's 'module.' prefix."""
    if isinstance(state, nn.Module):
        return state.state_dict()
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError("the checkpoint does not hold a state_dict", where="model.checkpoint",
                         got=f"{type(state).__name__} in {path}", expected="a dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path | str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the mismatching tensors."""
    expected = model.state_dict()
    shape_diffs = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                   for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if shape_diffs or missing or unexpected:
        details = shape_diffs[:3] + [f"missing in checkpoint: {k}" for k in missing[:3]] + [
            f"not in model: {k}" for k in unexpected[:3]]
        raise InputError(
            "the checkpoint does not fit the model architecture", where="model.checkpoint",
            got=f"{path}: " + "; ".join(details)
                + (f" (+{len(shape_diffs) + len(missing) + len(unexpected) - len(details)} more)"
                   if len(shape_diffs) + len(missing) + len(unexpected) > len(details) else ""),
            expected="a state_dict of the architecture named by model.source and model.args",
            fix="check model.source/model.args (e.g. num_classes) match how the checkpoint was trained",
        )
    model.load_state_dict(state, strict=True)


def model_fingerprint(spec: ModelSpec, base_dir: Path) -> str:
    """Content id of the input model: spec, checkpoint bytes and the factory's source file."""
    digest = hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode())
    checkpoint = _resolve(spec.checkpoint, base_dir)
    if checkpoint is not None:
        digest.update(file_sha256(checkpoint).encode())
    source_file = _factory_file(spec, base_dir)
    if source_file is not None:
        digest.update(file_sha256(source_file).encode())
    return digest.hexdigest()[:16]


def _factory_file(spec: ModelSpec, base_dir: Path) -> Path | None:
    if spec.source.startswith("torchvision:"):
        return None
    return callable_source_file(spec.source, base_dir, what="model", where="model.source")


def callable_source_file(ref: str, base_dir: Path, *, what: str, where: str) -> Path | None:
    """The file defining the ``module:callable`` ``ref`` (None for builtins): part of cache keys."""
    factory = import_callable(ref, base_dir, what=what, where=where)
    try:
        source = inspect.getsourcefile(factory)
    except TypeError:  # builtins and C extensions have no source file
        return None
    return Path(source) if source and Path(source).is_file() else None
