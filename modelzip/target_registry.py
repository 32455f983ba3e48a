"""Target discovery through the ``modelzip.targets`` entry-point group.

Built-in targets are registered in pyproject.toml exactly as a third-party package
(NCNN, Core ML, ExecuTorch, ...) registers its own; a malformed one raises
:class:`PluginError` naming it, when it is loaded.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from modelzip.errors import PluginError, UnknownTargetError
from modelzip.registry import closest, suggest
from modelzip.target import Target, TargetConfig

ENTRY_POINT_GROUP = "modelzip.targets"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class TargetRegistry:
    """Maps target names to target classes, loading entry points on first use."""

    _entry_points: dict[str, list[EntryPoint]] = field(default_factory=dict)
    _loaded: dict[str, type[Target]] = field(default_factory=dict)

    @classmethod
    def from_entry_points(cls) -> TargetRegistry:
        registry = cls()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            registry._entry_points.setdefault(ep.name, []).append(ep)
        return registry

    def names(self) -> list[str]:
        return sorted(set(self._entry_points) | set(self._loaded))

    def __contains__(self, name: str) -> bool:
        return name in self._entry_points or name in self._loaded

    def register(self, target_cls: type[Target], *, origin: str = "<direct>", replace: bool = False) -> None:
        """Register a class directly (tests, notebooks); ``replace`` stands in for an installed one."""
        verify_target(target_cls, getattr(target_cls, "name", "?"), origin)
        if replace:
            self._entry_points.pop(target_cls.name, None)
        elif target_cls.name in self and self._loaded.get(target_cls.name) is not target_cls:
            raise PluginError("a target with this name is already registered", plugin=target_cls.name,
                              fix="choose another `name`, or register(..., replace=True) to stand in for it")
        self._loaded[target_cls.name] = target_cls

    def get(self, name: str) -> type[Target]:
        """The target class called ``name``; :class:`UnknownTargetError` (did-you-mean) if none."""
        if name in self._loaded:
            return self._loaded[name]
        eps = self._entry_points.get(name)
        if not eps:
            names = self.names()
            raise UnknownTargetError(name, available=names, suggestion=closest(name, names))
        distinct = {ep.value for ep in eps}
        if len(distinct) > 1:
            raise PluginError("two installed packages register a target with this name", plugin=name,
                              got=", ".join(sorted(distinct)), fix="uninstall one of them")
        try:
            target_cls = eps[0].load()
        except Exception as exc:  # any import failure of a third-party module
            raise PluginError(f"cannot import the target ({type(exc).__name__}: {exc})", plugin=name,
                              got=eps[0].value, fix="reinstall the package that provides it") from exc
        verify_target(target_cls, name, eps[0].value)
        self._loaded[name] = target_cls
        return target_cls

    def suggest(self, name: str) -> str | None:
        return suggest(name, self.names())


def verify_target(target_cls: object, name: str, origin: str) -> None:
    """Reject malformed target plugins at load time, naming what is wrong."""

    def bad(what: str, fix: str) -> PluginError:
        return PluginError(what, plugin=name, got=origin, fix=fix)

    if not (isinstance(target_cls, type) and issubclass(target_cls, Target)):
        raise bad("the entry point is not a subclass of modelzip.Target", "point it at a Target subclass")
    if not _NAME.match(name):
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
