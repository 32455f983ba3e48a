"""The README's plugin example runs as written, so the README cannot rot."""
from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> dict[str, str]:
    """The python code blocks of "Writing a pass (plugin)", by their first-line comment."""
    text = README.read_text()
    section = text[text.index("## Writing a pass (plugin)"):text.index("## Using it from Python")]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return {block.splitlines()[0].lstrip("# ").strip(): block for block in blocks}


def test_readme_plugin_example_runs(tmp_path, monkeypatch):
    blocks = _blocks()
    package, module = types.ModuleType("mypkg"), types.ModuleType("mypkg.stamp")
    monkeypatch.setitem(sys.modules, "mypkg", package)
    monkeypatch.setitem(sys.modules, "mypkg.stamp", module)
    exec(compile(blocks["mypkg/stamp.py"], "README:mypkg/stamp.py", "exec"), module.__dict__)

    from modelzip.registry import PassRegistry

    PassRegistry().register(module.StampPass)  # what loading its entry point checks
    tests: dict = {}
    exec(compile(blocks["mypkg/tests/test_stamp.py"], "README:test_stamp.py", "exec"), tests)
    ran = 0
    for name, function in tests.items():
        if name.startswith("test_") and callable(function):
            directory = tmp_path / name
            directory.mkdir()
            kwargs = {"tmp_path": directory} if "tmp_path" in inspect.signature(function).parameters else {}
            function(**kwargs)
            ran += 1
    assert ran == 3  # contract, unit, end to end
