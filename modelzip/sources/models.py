"""Model sources: the zoo, torchvision, and user factories named ``module:callable``.

Checkpoints are state_dicts loaded with ``weights_only=True``; a pickled module
loads only when the recipe says ``trust_checkpoint: true``.

Importing and calling user code lives in ``sources.user_code``; the model's content id,
computed without torch, in ``sources.identity``.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip.errors import InputError, ModelzipError
from modelzip.recipe import ModelSpec
from modelzip.registry import suggest
from modelzip.sources.identity import model_fingerprint  # noqa: F401 - re-exported
from modelzip.sources.locations import checkpoint_file, resolve_checkpoint
from modelzip.sources.user_code import (  # noqa: F401 - re-exported
    callable_source_file,
    check_arguments,
    describe_exception,
    import_callable,
    user_code,
)

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
# torch.save's legacy (pre-1.6, non-zip) format starts with this pickled magic number.
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]  # without the STOP opcode


def build_model(spec: ModelSpec, base_dir: Path) -> nn.Module:
    """Instantiate the architecture named by ``spec.source`` (weights untouched)."""
    prefix, _, name = spec.source.partition(":")
    torchvision = prefix == "torchvision"
    factory = _torchvision_factory(name) if torchvision else import_callable(
        spec.source, base_dir, what="model", where="model.source")
    check_arguments(factory, spec.args, what="model", where="model.args")
    # torchvision's own code is not the user's: its failures come from `model.args` (e.g. weights).
    where, fix = (("model.args", "match `model.args` to torchvision's parameters for this model")
                  if torchvision else
                  ("model.source", "fix the factory; `modelzip --debug run ...` shows the traceback"))
    with user_code(f"the model factory {spec.source!r}", where=where, fix=fix):
        model = factory(**spec.args)
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
    for name, conv in model.named_modules():  # noqa: B007 - the loop finds `name`, used below
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
    checkpoint = resolve_checkpoint(spec.checkpoint, base_dir)
    if checkpoint is not None and spec.trust_checkpoint:
        loaded = read_checkpoint(checkpoint, trusted=True)
        if isinstance(loaded, nn.Module):
            return loaded.eval()
    model = build_model(spec, base_dir)
    if checkpoint is not None:
        state = loaded if spec.trust_checkpoint else read_checkpoint(checkpoint)
        load_state(model, _unwrap(state, checkpoint, "model.checkpoint"), checkpoint)
    return model.eval()


def read_checkpoint(path: Path, *, where: str = "model.checkpoint", trusted: bool = False,
                    trust_key: str | None = "model.trust_checkpoint") -> Any:
    """``torch.load`` on the CPU, with ``weights_only`` unless ``trusted``.

    A file torch.save did not write (random bytes, a truncated file, any other
    zip), one that cannot be read, or one that pickles Python objects without
    trust is an InputError at ``where`` naming the file. ``trust_key`` is the
    recipe key that would allow unpickling; None where there is none.
    """
    try:
        problem = _not_a_torch_file(path)
        if problem is None:
            return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as exc:
        unpickled = re.search(r"GLOBAL (\S+)", str(exc))
        if trusted or unpickled is None:
            raise _corrupt(exc, path, where) from exc
        raise InputError(
            "the checkpoint is not a plain state_dict (it pickles Python objects)", where=where,
            got=f"{path} pickles {unpickled.group(1)}", expected="torch.save(model.state_dict(), path)",
            fix="re-save the state_dict" + (f", or set `{trust_key}: true` if you trust the file "
                                            "(unpickling runs code from it)" if trust_key else ""),
        ) from exc
    except OSError as exc:
        raise InputError(f"cannot read the checkpoint: {exc.strerror or exc}", where=where, got=str(path),
                         fix="check the file's permissions and the disk") from exc
    except ModelzipError:
        raise
    except Exception as exc:  # torch reports damaged files as RuntimeError, EOFError, KeyError, IndexError...
        raise _corrupt(exc, path, where) from exc
    raise InputError("the file is not a torch checkpoint", where=where, got=f"{path}: {problem}",
                     expected="a file written by torch.save(model.state_dict(), path)",
                     fix="check the path, or save the checkpoint again (the file may be incomplete)")


def _not_a_torch_file(path: Path) -> str | None:
    """Why ``path`` cannot be a torch.save file, from its bytes; None when it may be one."""
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if zipfile.is_zipfile(path):  # torch.save's format: <archive>/data.pkl plus one file per tensor
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as exc:
            return f"a damaged zip archive ({exc})"
        return None if any(n.endswith("/data.pkl") for n in names) else (
            f"a zip archive without data.pkl (holds {', '.join(names[:3]) or 'nothing'})")
    if head == _LEGACY_MAGIC:  # torch.save(..., _use_new_zipfile_serialization=False)
        return None
    if not head:
        return "an empty file"
    if head.startswith(b"PK"):
        return "a zip archive that ends early (truncated?)"
    return f"unknown content (starts with {head[:8]!r})"


def _corrupt(exc: BaseException, path: Path, where: str) -> InputError:
    first_line = (str(exc).strip().splitlines() or [""])[0][:200]
    return InputError("the checkpoint is damaged or not written by torch.save", where=where,
                      got=f"{path}: {type(exc).__name__}: {first_line}",
                      expected="a complete file written by torch.save(model.state_dict(), path)",
                      fix="save the checkpoint again (the file may be truncated or corrupted)")


def read_state_dict(path: Path, *, where: str) -> dict[str, torch.Tensor]:
    """The state_dict in a checkpoint file (common wrappers unwrapped), never unpickling objects."""
    state = read_checkpoint(checkpoint_file(path, where=where), where=where, trust_key=None)
    return _unwrap(state, path, where)


def _unwrap(state: Any, path: Path, where: str) -> dict[str, torch.Tensor]:
    """Accept common wrappers ({'state_dict': ...}) and DDP's 'module.' prefix."""
    if isinstance(state, nn.Module):
        return state.state_dict()
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError("the checkpoint does not hold a state_dict", where=where,
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


