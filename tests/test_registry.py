"""Plugins: discovered through entry points, checked when loaded."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from modelzip import Pass, PassConfig, PluginError
from modelzip.errors import InputError, UnknownPassError
from modelzip.passes.export import ExportPass
from modelzip.registry import PassRegistry, default_registry, verify_pass


class GoodConfig(PassConfig):
    factor: float = 1.0


class GoodPass(Pass):
    name = "good"
    summary = "does nothing, well"
    Config = GoodConfig

    def run(self, artifact, config, ctx):
        return artifact


def test_builtins_come_from_entry_points():
    registry = PassRegistry.from_entry_points()
    assert "export" in registry._entry_points  # not registered by hand
    assert registry.get("export") is ExportPass


def test_register_and_suggest():
    registry = PassRegistry()
    registry.register(GoodPass)
    assert registry.get("good") is GoodPass
    assert registry.suggest("godo") == "did you mean 'good'?"


def test_unknown_name_is_a_typed_error_with_did_you_mean():
    registry = PassRegistry()
    registry.register(GoodPass)
    with pytest.raises(UnknownPassError) as info:
        registry.get("godo")
    assert isinstance(info.value, InputError) and info.value.exit_code == 2
    assert (info.value.name, info.value.suggestion, info.value.available) == ("godo", "good", ["good"])
    assert "did you mean 'good'?" in info.value.fix
    with pytest.raises(UnknownPassError) as info:
        registry.get("zzzzzz")
    assert info.value.suggestion is None and info.value.available == ["good"]


def _variant(**attrs):
    return type("Variant", (GoodPass,), attrs)


class LooseConfig(PassConfig):
    model_config = {"extra": "allow"}


@pytest.mark.parametrize("pass_cls, fragment", [
    (object, "not a subclass"),
    (_variant(name="Bad-Name"), "lower_snake_case"),
    (_variant(name="other"), "registered as 'good'"),
    (_variant(Config=dict), "Config must be a subclass"),
    (_variant(Config=LooseConfig), "forbid unknown keys"),
    (_variant(summary=""), "summary"),
    (_variant(consumes=("tflite",)), "consumes"),
    (_variant(run=Pass.run), "not implemented"),
])
def test_malformed_plugins_are_rejected_by_name(pass_cls, fragment):
    name = "Bad-Name" if getattr(pass_cls, "name", "") == "Bad-Name" else "good"
    with pytest.raises(PluginError) as info:
        verify_pass(pass_cls, name, "tests:Variant")
    assert info.value.plugin == name
    assert fragment in info.value.what
    assert info.value.exit_code == 2


def test_duplicate_registration_is_rejected():
    registry = PassRegistry()
    registry.register(GoodPass)
    twin = _variant()
    with pytest.raises(PluginError) as info:
        registry.register(twin)
    assert info.value.plugin == "good"


def test_default_registry_is_shared():
    assert default_registry() is default_registry()


def make_third_party_plugin(site, body: str, name: str = "shout") -> None:
    """Install a plugin the way pip would: a module plus a dist-info with entry_points.txt."""
    (site / "zipplugin_demo.py").write_text(textwrap.dedent(body))
    info = site / "zipplugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zipplugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[modelzip.passes]\n{name} = zipplugin_demo:ShoutPass\n")


THIRD_PARTY = """
from modelzip import Pass, PassConfig

class ShoutConfig(PassConfig):
    times: int = 1

class ShoutPass(Pass):
    name = "shout"
    summary = "a third-party pass found through its entry point"
    Config = ShoutConfig

    def run(self, artifact, config, ctx):
        ctx.record(shouted=config.times)
        return artifact
"""


def test_third_party_plugin_is_listed(tmp_path):
    make_third_party_plugin(tmp_path, THIRD_PARTY)
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "modelzip", "passes"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "shout" in out and "third-party pass" in out


def test_broken_third_party_plugin_is_reported_not_fatal(tmp_path):
    make_third_party_plugin(tmp_path, "raise ImportError('missing dependency foo')\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "modelzip", "passes"], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0
    assert "broken plugin" in result.stdout and "export" in result.stdout


def test_register_replace_stands_in_for_an_installed_pass():
    from modelzip.errors import PluginError
    from modelzip.plugin import Pass, PassConfig

    class Export(Pass):
        name = "export"
        summary = "a stand-in"
        Config = PassConfig

        def run(self, artifact, config, ctx):
            return artifact

    registry = PassRegistry.from_entry_points()
    with pytest.raises(PluginError):
        registry.register(Export)
    registry.register(Export, replace=True)
    assert registry.get("export") is Export


def test_explain_shows_a_default_factory_value():
    from modelzip.passes.prune import PruneConfig
    from modelzip.schema_text import describe_fields

    assert dict(describe_fields(PruneConfig))["ignore"][1] == "[]"
