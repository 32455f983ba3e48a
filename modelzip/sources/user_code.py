"""Running the user's code: importing a ``module:callable`` the recipe names, and turning
whatever that code raises into an InputError that names the recipe key.

User code (a factory, the module that defines it, a dataset callable) can fail in any way;
``user_code`` turns whatever it raises, ``sys.exit`` included, into an InputError that
names the recipe key, so it is never reported as a bug in modelzip. Ctrl-C
(KeyboardInterrupt) passes through. Nothing here imports torch.
"""
from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelzip.errors import InputError, ModelzipError
from modelzip.registry import suggest


@contextmanager
def user_code(what: str, *, where: str, fix: str) -> Iterator[None]:
    """Run user code; anything it raises (``sys.exit`` too) becomes an InputError at ``where``.

    Our own errors and KeyboardInterrupt pass through unchanged.
    """
    try:
        yield
    except ModelzipError:
        raise
    except (Exception, SystemExit) as exc:
        raise InputError(f"{what} raised {type(exc).__name__}", where=where,
                         got=describe_exception(exc), fix=fix) from exc


def describe_exception(exc: BaseException) -> str:
    """``Type: message (file:line in function)``, located at the innermost frame."""
    if isinstance(exc, SystemExit):
        text = f"SystemExit: sys.exit({exc.code!r}) was called"
    else:
        text = f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames and not isinstance(exc, SyntaxError):  # a SyntaxError's message already says where
        last = frames[-1]
        text += f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    return text


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
        except ModuleNotFoundError as exc:
            if not _is_module_or_parent(exc.name, module_name):
                raise _import_failed(exc, module_name, what, where) from exc
            raise InputError(
                f"cannot import module {module_name!r} for the {what}", where=where,
                got=f"{type(exc).__name__}: {exc}", expected="a module on sys.path or beside the recipe",
                fix=f"check the spelling, or put {module_name.replace('.', '/')}.py beside the recipe",
            ) from exc
        except (Exception, SystemExit) as exc:  # a SyntaxError, or any error in the module's own code
            raise _import_failed(exc, module_name, what, where) from exc
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


def _is_module_or_parent(missing: str | None, module_name: str) -> bool:
    return missing is not None and (module_name == missing or module_name.startswith(missing + "."))


def _import_failed(exc: BaseException, module_name: str, what: str, where: str) -> InputError:
    """The module exists, but importing it failed (its code raised, or it imports something absent)."""
    if isinstance(exc, ModuleNotFoundError):
        fix = f"install {exc.name!r} (module {module_name!r} imports it)"
    else:
        fix = f"fix the error in {module_name!r}; `python -c 'import {module_name}'` shows the traceback"
    return InputError(f"importing module {module_name!r} for the {what} raised {type(exc).__name__}",
                      where=where, got=describe_exception(exc), fix=fix)


def check_arguments(factory: Callable[..., Any], args: dict[str, Any], *, what: str, where: str) -> None:
    """Arguments the factory's signature cannot take are the recipe's mistake (``where``), found
    before the call, so that a TypeError raised inside the factory is not blamed on them."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature; the call decides
        return
    try:
        signature.bind(**args)
    except TypeError as exc:
        raise InputError(f"the {what} factory does not take these arguments: {exc}", where=where,
                         got=args, expected=f"arguments of {signature}",
                         fix=f"match `{where}` to the factory's parameters") from exc


def callable_source_file(ref: str, base_dir: Path, *, what: str, where: str) -> Path | None:
    """The file defining the ``module:callable`` ``ref`` (None for builtins): part of cache keys.

    Imports the module (and so runs its code); :func:`module_file` finds the named module's
    file without running anything.
    """
    factory = import_callable(ref, base_dir, what=what, where=where)
    try:
        source = inspect.getsourcefile(factory)
    except TypeError:  # builtins and C extensions have no source file
        return None
    return Path(source) if source and Path(source).is_file() else None


def module_file(ref: str, base_dir: Path) -> Path | None:
    """The file of the module ``ref`` names, found as ``import`` would find it but without
    running it (a dotted name imports its parent packages); None when there is no such file."""
    import importlib.util

    module_name = ref.partition(":")[0]
    with _importable_from(base_dir):
        try:
            spec = importlib.util.find_spec(module_name)
        except (Exception, SystemExit):  # a parent package that fails to import: import_callable says why
            return None
    origin = spec.origin if spec is not None and spec.has_location else None
    return Path(origin) if origin and Path(origin).is_file() else None
