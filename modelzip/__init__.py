"""modelzip: declarative model compression (prune, finetune, quantize, export) with honest reports.

The public surface is small; everything here imports without torch.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from modelzip.errors import (
    DeployFailure,
    GateFailure,
    InputError,
    ModelzipError,
    PassError,
    PluginError,
    RecipeError,
    TargetError,
    UnknownPassError,
)
from modelzip.plugin import Pass, PassConfig
from modelzip.target import Converted, ConvertInput, Target, TargetConfig, TargetSession

try:
    __version__ = version("modelzip")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

if TYPE_CHECKING:  # pragma: no cover
    from modelzip.pipeline import RunOptions, RunResult
    from modelzip.recipe import Recipe


def load_recipe(path, overrides=(), registry=None) -> Recipe:
    """Read and validate a recipe file (raises RecipeError listing every problem)."""
    from modelzip.recipe import load_recipe as _load

    return _load(path, overrides, registry)


def run_recipe(recipe: Recipe, options: RunOptions | None = None) -> RunResult:
    """Run a validated recipe; returns the report and gate results (imports torch)."""
    from modelzip.pipeline import run_recipe as _run

    return _run(recipe, options)


def __getattr__(name: str) -> Any:
    if name in ("RunOptions", "RunResult", "Artifact", "PassContext"):
        import importlib

        module = {"RunOptions": "pipeline", "RunResult": "pipeline", "Artifact": "artifacts",
                  "PassContext": "context"}[name]
        return getattr(importlib.import_module(f"modelzip.{module}"), name)
    raise AttributeError(name)


__all__ = [
    "Artifact", "ConvertInput", "Converted", "DeployFailure", "GateFailure", "InputError", "ModelzipError",
    "Pass", "PassConfig", "PassContext", "PassError", "PluginError", "RecipeError", "RunOptions", "RunResult",
    "Target", "TargetConfig", "TargetError", "TargetSession", "UnknownPassError", "__version__", "load_recipe",
    "run_recipe",
]
