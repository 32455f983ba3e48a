"""Target discovery through the ``modelzip.targets`` entry-point group.

Built-in targets are registered in pyproject.toml exactly as a third-party package
(NCNN, Core ML, ExecuTorch, ...) registers its own; a malformed one raises
:class:`PluginError` naming it, when it is loaded.
"""
from __future__ import annotations

from modelzip.errors import PluginError, UnknownTargetError
from modelzip.registry import PLUGIN_NAME, EntryPointRegistry
from modelzip.target import Target, TargetConfig

ENTRY_POINT_GROUP = "modelzip.targets"


class TargetRegistry(EntryPointRegistry[Target]):
    """Maps target names to target classes, loading entry points on first use."""

    group = ENTRY_POINT_GROUP
    kind = "target"
    unknown_error = UnknownTargetError

    def verify(self, plugin_cls: object, name: str, origin: str) -> None:
        verify_target(plugin_cls, name, origin)


def verify_target(target_cls: object, name: str, origin: str) -> None:
    """Reject malformed target plugins at load time, naming what is wrong."""

    def bad(what: str, fix: str) -> PluginError:
        return PluginError(what, plugin=name, got=origin, fix=fix)

    if not (isinstance(target_cls, type) and issubclass(target_cls, Target)):
        raise bad("the entry point is not a subclass of modelzip.Target", "point it at a Target subclass")
    if not PLUGIN_NAME.match(name):
        raise bad("target names are lower_snake_case", "rename the entry point")
    if getattr(target_cls, "name", None) != name:
        raise bad(f"Target.name is {getattr(target_cls, 'name', None)!r} but it is registered as {name!r}",
                  "make the class attribute `name` equal the entry-point name")
    config = getattr(target_cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, TargetConfig)):
        raise bad("Target.Config must be a subclass of modelzip.TargetConfig", "derive Config from TargetConfig")
    if config.model_config.get("extra") != "forbid":
        raise bad("Target.Config must forbid unknown keys", "keep TargetConfig's model_config")
    for attribute in ("summary", "runtime"):
        if not isinstance(getattr(target_cls, attribute, None), str) or not getattr(target_cls, attribute).strip():
            raise bad(f"Target.{attribute} must be a non-empty string", f"set `{attribute}`")
    if target_cls.convert is Target.convert:
        raise bad("Target.convert is not implemented", "implement convert(source, config, out_dir)")


_DEFAULT: TargetRegistry | None = None


def default_targets() -> TargetRegistry:
    """The process-wide registry of installed targets (discovered once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = TargetRegistry.from_entry_points()
    return _DEFAULT
