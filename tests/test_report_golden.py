"""Golden report.json and report.md of a tiny run: the shape is pinned, machine-dependent values
(timings, latency, hashes, versions) are replaced by placeholders, numbers compared with tolerances.

Regenerate after an intended change of the report (review the diff before committing):
    MODELZIP_UPDATE_GOLDEN=1 python -m pytest -q tests/test_report_golden.py
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest

from modelzip import load_recipe, run_recipe
from tests.conftest import synthetic_recipe

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("MODELZIP_UPDATE_GOLDEN") == "1"
# Export alone: the final file is the baseline's bytes, so the latency verdict is "same model" with
# ratio 1.0 on every machine; the gates are loose enough to pass and exercise every kind.
RECIPE = synthetic_recipe("  - export: {}", checkpoint="tiny.pt") + (
    "gates: {max_accuracy_drop: 0.5, min_accuracy: 0.0, min_size_ratio: 0.5, min_speedup: 0.5}\n")

# Values that depend on the machine, the clock or library versions: the key stays, the value goes.
VOLATILE = {"wall_time_s", "median_ms", "p90_ms", "mean_ms", "quantiles_ms", "runs", "threads", "key", "id", "parent",
            "sha256", "max_abs_diff"}
_DIFF = re.compile(r"max \|diff\| \S+")  # in export's summary line and report.md
# optimize's summary: sizes and overhead shares follow the library versions like the byte counts.
_LEAN = re.compile(r"\S+ [kM]B -> \S+ [kM]B \(-\S+%\), graph overhead \S+% -> \S+%")
# Sizes depend on the torch/onnx versions that wrote the files (a few bytes of metadata).
SIZE_TOLERANCE = 0.05


def normalize_json(value, key: str | None = None):
    if key in VOLATILE:
        return f"<{key}>"
    if key == "environment":
        return {k: f"<{k}>" for k in value}
    if key == "files":
        return {name: {k: f"<{k}>" for k in entry} for name, entry in value.items()}
    if isinstance(value, dict):
        return {k: normalize_json(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize_json(v) for v in value]
    if isinstance(value, str):
        return _LEAN.sub("<sizes>", _DIFF.sub("max |diff| <diff>", value))
    return value


def assert_matches(got, expected, path: str = "report") -> None:
    """Same keys in the same order, same types and strings; numbers within tolerances."""
    if isinstance(expected, dict):
        assert isinstance(got, dict), path
        assert list(got) == list(expected), f"{path}: keys {list(got)} != {list(expected)}"
        for k in expected:
            assert_matches(got[k], expected[k], f"{path}.{k}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_matches(g, e, f"{path}[{i}]")
    elif isinstance(expected, bool) or expected is None or isinstance(expected, str):
        assert got == expected, f"{path}: {got!r} != {expected!r}"
    else:
        assert isinstance(got, (int, float)) and not isinstance(got, bool), f"{path}: {got!r}"
        assert type(got) is type(expected), f"{path}: {type(got).__name__} != {type(expected).__name__}"
        rel = SIZE_TOLERANCE if path.endswith(("_bytes", ".size", ".overhead")) else 1e-6
        assert math.isclose(got, expected, rel_tol=rel, abs_tol=1e-9), f"{path}: {got} != {expected}"
        assert math.copysign(1, got) == math.copysign(1, expected), f"{path}: {got} != {expected}"  # -0.0


_MD_RULES = [
    (re.compile(r"\| \d+\.\ds( \(cached\))? \|"), "| <time> |"),
    (re.compile(r"\d+\.\d{3} / \d+\.\d{3}"), "<ms> / <p90 ms>"),
    (re.compile(r"\d+ threads"), "<n> threads"),
    (_DIFF, "max |diff| <diff>"),
    (_LEAN, "<sizes>"),
]


def normalize_markdown(text: str) -> str:
    head, sep, tail = text.partition("## Environment\n\n")
    environment, _, rest = tail.partition("\n\n")
    text = head + sep + ("<environment line>\n\n" + rest if sep else "")
    for pattern, replacement in _MD_RULES:
        text = pattern.sub(replacement, text)
    return text


def _check(name: str, got: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(got)
        pytest.skip(f"updated {path}")
    assert path.is_file(), f"{path} is missing: run with MODELZIP_UPDATE_GOLDEN=1"
    if name.endswith(".json"):
        assert_matches(json.loads(got), json.loads(path.read_text()))
    else:
        assert got == path.read_text()


@pytest.fixture
def tiny_run(tiny_checkpoint, recipe_file):
    return run_recipe(load_recipe(recipe_file(RECIPE)))


def test_report_json_matches_golden(tiny_run) -> None:
    report = json.loads((tiny_run.output_dir / "report.json").read_text())
    assert report == tiny_run.report  # what run_recipe returns is what it wrote
    _check("report_tiny.json", json.dumps(normalize_json(report), indent=2) + "\n")


def test_report_md_matches_golden(tiny_run) -> None:
    _check("report_tiny.md", normalize_markdown((tiny_run.output_dir / "report.md").read_text()))


def test_normalizers_keep_keys_and_drop_values() -> None:
    report = {"wall_time_s": 1.5, "final": {"latency": {"batch_1": {"final": {"median_ms": 0.2, "batch": 1}}}},
              "environment": {"python": "3.11"}}
    assert normalize_json(report) == {"wall_time_s": "<wall_time_s>", "environment": {"python": "<python>"},
                                      "final": {"latency": {"batch_1": {"final": {"median_ms": "<median_ms>",
                                                                                   "batch": 1}}}}}
    with pytest.raises(AssertionError, match="size"):
        assert_matches({"size_bytes": 200}, {"size_bytes": 100})
    assert_matches({"size_bytes": 101}, {"size_bytes": 100})


def test_terminal_summary_reads_the_typed_final(tiny_run, capsys) -> None:
    from modelzip.cli import _print_run

    _print_run(tiny_run, quiet=True)
    line = capsys.readouterr().out.strip().replace("\n", "")
    assert line.startswith("passed: accuracy 32.03% (+0.00 pp), 1.00x smaller, 1.00x speedup (same model) -> "), line
    assert line.endswith("model.onnx, report.json, report.md, report.html"), line


def test_report_html_charts_come_from_the_memo_on_a_rerun(tiny_run, monkeypatch) -> None:
    """A cached rerun renders report.html without drawing (matplotlib is not imported)."""
    from modelzip import report_html

    assert (tiny_run.output_dir / "report.html").is_file()  # written with the other reports

    class Memo(dict):
        def recall(self, token):
            return self.get(token)

        def remember(self, token, value):
            self[token] = value

    report = tiny_run.report
    memo = Memo()
    first = report_html.render_html(report, memo)
    assert len(memo) == 3 and first.count("<svg") == 3  # accuracy, size, latency

    def no_drawing():
        raise AssertionError("a chart was drawn again")

    monkeypatch.setattr(report_html, "figure", no_drawing)
    assert report_html.render_html(report, memo) == first
    report["steps"][0]["metrics"]["accuracy"] = 0.5  # what a chart shows changed: drawn again
    with pytest.raises(AssertionError, match="drawn again"):
        report_html.render_html(report, memo)
