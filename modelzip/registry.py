"""Plugin discovery through entry-point groups; here the passes (``modelzip.passes``).

Built-in passes are registered in pyproject.toml exactly as a third-party
package registers its own. A plugin is checked when it is loaded; a malformed
one raises :class:`PluginError` naming it.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel

from modelzip.errors import PluginError, UnknownPassError, UnknownPluginError
from modelzip.plugin import ARTIFACT_KINDS, Pass, PassConfig

ENTRY_POINT_GROUP = "modelzip.passes"
PLUGIN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # lower_snake_case, as entry-point names are written
Plugin = TypeVar("Plugin")


def closest(name: str, choices: list[str]) -> str | None:
    """The choice most like ``name`` (None when nothing is close)."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def suggest(name: str, choices: list[str]) -> str | None:
    """A did-you-mean phrase for ``name`` among ``choices`` (None when nothing is close)."""
    close = closest(name, choices)
    return f"did you mean {close!r}?" if close else None


@dataclass
class EntryPointRegistry(Generic[Plugin]):
    """Names to plugin classes from one entry-point group, loaded on first use.

    PassRegistry and TargetRegistry (modelzip.target_registry) differ only in their group, the
    word their messages use, how a class is checked and the error for an unknown name.
    """

    group: ClassVar[str]
    kind: ClassVar[str]  # "pass" | "target": the word in messages
    unknown_error: ClassVar[type[UnknownPluginError]]

    _entry_points: dict[str, list[EntryPoint]] = field(default_factory=dict)
    _loaded: dict[str, type[Plugin]] = field(default_factory=dict)

    @classmethod
    def from_entry_points(cls):
        registry = cls()
        for ep in entry_points(group=cls.group):
            registry._entry_points.setdefault(ep.name, []).append(ep)
        return registry

    def verify(self, plugin_cls: object, name: str, origin: str) -> None:
        raise NotImplementedError

    def names(self) -> list[str]:
        return sorted(set(self._entry_points) | set(self._loaded))

    def __contains__(self, name: str) -> bool:
        return name in self._entry_points or name in self._loaded

    def register(self, plugin_cls: type[Plugin], *, origin: str = "<direct>", replace: bool = False) -> None:
        """Register a class directly (tests, notebooks). Same checks as entry points.

        ``replace=True`` lets it stand in for an installed plugin of the same name (a plugin's
        own tests, run where the plugin is also installed).
        """
        self.verify(plugin_cls, getattr(plugin_cls, "name", "?"), origin)
        if replace:
            self._entry_points.pop(plugin_cls.name, None)
        elif plugin_cls.name in self and self._loaded.get(plugin_cls.name) is not plugin_cls:
            raise PluginError(
                f"a {self.kind} with this name is already registered",
                plugin=plugin_cls.name,
                fix=f"choose another `name` for the {self.kind}, or register(..., replace=True) to stand in for it",
            )
        self._loaded[plugin_cls.name] = plugin_cls

    def get(self, name: str) -> type[Plugin]:
        """The class called ``name``; the registry's unknown-name error (with a did-you-mean) if
        there is none."""
        if name in self._loaded:
            return self._loaded[name]
        eps = self._entry_points.get(name)
        if not eps:
            names = self.names()
            raise self.unknown_error(name, available=names, suggestion=closest(name, names))
        distinct = {ep.value for ep in eps}
        if len(distinct) > 1:
            raise PluginError(
                f"two installed packages register a {self.kind} with this name",
                plugin=name,
                got=", ".join(sorted(distinct)),
                fix="uninstall one of them",
            )
        plugin_cls = self._load(eps[0])
        self.verify(plugin_cls, name, eps[0].value)
        self._loaded[name] = plugin_cls
        return plugin_cls

    def suggest(self, name: str) -> str | None:
        return suggest(name, self.names())

    def _load(self, ep: EntryPoint) -> type[Plugin]:
        try:
            return ep.load()
        except Exception as exc:  # any import failure of a third-party module
            raise PluginError(
                f"cannot import the {self.kind} ({type(exc).__name__}: {exc})",
                plugin=ep.name,
                got=ep.value,
                fix="reinstall the package that provides it, or uninstall it",
            ) from exc


class PassRegistry(EntryPointRegistry[Pass]):
    """Maps pass names to pass classes, loading entry points on first use."""

    group = ENTRY_POINT_GROUP
    kind = "pass"
    unknown_error = UnknownPassError

    def verify(self, plugin_cls: object, name: str, origin: str) -> None:
        verify_pass(plugin_cls, name, origin)



def verify_pass(pass_cls: object, name: str, origin: str) -> None:
    """Reject malformed plugins at load time, naming what is wrong."""

    def bad(what: str, fix: str) -> PluginError:
        return PluginError(what, plugin=name, got=origin, fix=fix)

    if not (isinstance(pass_cls, type) and issubclass(pass_cls, Pass)):
        raise bad("the entry point is not a subclass of modelzip.Pass", "point it at a Pass subclass")
    if not PLUGIN_NAME.match(name):
        raise bad("pass names are lower_snake_case", "rename the entry point")
    if getattr(pass_cls, "name", None) != name:
        raise bad(
            f"Pass.name is {getattr(pass_cls, 'name', None)!r} but it is registered as {name!r}",
            "make the class attribute `name` equal the entry-point name",
        )
    config = getattr(pass_cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, PassConfig)):
        raise bad("Pass.Config must be a subclass of modelzip.PassConfig", "derive Config from PassConfig")
    if issubclass(config, BaseModel) and config.model_config.get("extra") != "forbid":
        raise bad("Pass.Config must forbid unknown keys", "keep PassConfig's model_config")
    if not isinstance(getattr(pass_cls, "summary", None), str) or not pass_cls.summary.strip():
        raise bad("Pass.summary must be a one-line description", "set `summary`")
    if not pass_cls.consumes or any(k not in ARTIFACT_KINDS for k in pass_cls.consumes):
        raise bad(f"Pass.consumes must list kinds among {ARTIFACT_KINDS}", "fix `consumes`")
    if pass_cls.produces is not None and pass_cls.produces not in ARTIFACT_KINDS:
        raise bad(f"Pass.produces must be one of {ARTIFACT_KINDS} or None", "fix `produces`")
    if pass_cls.run is Pass.run:
        raise bad("Pass.run is not implemented", "implement run(artifact, config, ctx)")


_DEFAULT: PassRegistry | None = None


def default_registry() -> PassRegistry:
    """The process-wide registry of installed passes (discovered once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = PassRegistry.from_entry_points()
    return _DEFAULT
