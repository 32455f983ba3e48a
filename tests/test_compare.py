"""`modelzip compare`: runs side by side from report.json files built from the golden report,
--fail-on thresholds against a baseline run (exit 1), and every bad input (exit 2)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelzip.cli import app
from modelzip.compare import KEYS, compare, parse_fail_on, read_run
from modelzip.errors import InputError, RegressionFailure

GOLDEN = Path(__file__).parent / "golden" / "report_tiny.json"
runner = CliRunner()


def make_report(accuracy=0.3203125, size=9155, zip_bytes=6785, ms64: float | None = 0.5, ms1=0.02):
    """The golden report with concrete numbers; ``ms64=None``: latency not measured."""
    report = copy.deepcopy(json.loads(GOLDEN.read_text()))
    report["wall_time_s"] = 1.0
    report["environment"]["cpu_model"] = "test cpu"
    final = report["final"]
    # The baseline's sizes pinned too: golden's follow the exporter's and the optimize step's bytes.
    final.update(accuracy=accuracy, size_bytes=size, zip_bytes=zip_bytes, threads=2, baseline_size_bytes=9155,
                 baseline_zip_bytes=6785)
    ratios = final["ratios"]
    ratios.update(size=final["baseline_size_bytes"] / size, zip_size=final["baseline_zip_bytes"] / zip_bytes,
                  accuracy_delta=accuracy - report["baseline"]["onnx"]["accuracy"])  # the reference
    if ms64 is None:
        final["latency"] = None
        for key in ("speedup_batch_1", "speedup_batch_64", "speedup"):
            del ratios[key]
        return report
    for batch, ms, base_ms in ((1, ms1, 0.02), (64, ms64, 0.5)):
        pair = final["latency"][f"batch_{batch}"]
        for side, value in (("baseline", base_ms), ("final", ms)):
            pair[side].update(median_ms=value, p90_ms=value, mean_ms=value, runs=100, threads=2)
        ratio = round(base_ms / ms, 4)
        pair.update(ratio=ratio, ci_low=ratio - 0.02, ci_high=ratio + 0.02, pairs=100,
                    verdict="faster" if ratio > 1.03 else "within noise")
        ratios[f"speedup_batch_{batch}"] = ratio
    ratios["speedup"] = ratios["speedup_batch_64"]
    return report


@pytest.fixture
def runs(tmp_path):
    """main (the golden numbers), pr (1.56 pp less accurate, 3.5x smaller, faster), pr2 (same accuracy,
    larger and slower than main)."""
    def write(name: str, report) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps(report) if not isinstance(report, str) else report)
        return folder

    write("main", make_report())
    write("pr", make_report(accuracy=0.3046875, size=2600, zip_bytes=2100, ms64=0.3, ms1=0.015))
    write("pr2", make_report(size=9800, zip_bytes=7000, ms64=0.6))
    return tmp_path, write


def invoke(tmp_path: Path, *args: str):
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)  # short labels: the folders as written
    try:
        return runner.invoke(app, ["compare", *args])
    finally:
        os.chdir(cwd)


def test_table_shows_every_run_and_the_deltas(runs):
    from modelzip.compare import HEADER, rows

    tmp_path, _ = runs
    main, pr, pr2 = rows(compare([tmp_path / "main", tmp_path / "pr", tmp_path / "pr2"]))
    assert len(pr) == len(HEADER)
    assert pr[1:] == ["tiny", "passed", "30.47% (-1.56 pp)", "0.003 MB (3.52x, zip 3.23x)", "0.282 M",
                      "0.015 ms (1.33x)", "b64 0.300 ms (1.67x faster)", "-1.56 pp, 3.52x, 1.67x"]
    assert main[-1] == "(baseline)" and pr2[-1] == "+0.00 pp, 0.93x, 0.83x"
    result = invoke(tmp_path, "main", "pr", "pr2")
    assert result.exit_code == 0, result.output
    for fragment in ("runs vs baseline main", "30.47% (-1.56 pp)", "(baseline)", "vs baseline"):
        assert fragment in result.stdout, fragment


def test_planted_regression_exits_1_naming_run_and_key(runs):
    tmp_path, _ = runs
    result = invoke(tmp_path, "main", "pr", "pr2", "--fail-on", "accuracy_drop=0.002,size_ratio=0.95",
                    "--fail-on", "speedup_ratio=0.9")
    assert result.exit_code == 1, result.output
    assert "pr: accuracy_drop got 0.01562, limit <= 0.002" in result.output
    assert "pr2: size_ratio got 0.9342, limit >= 0.95" in result.output
    assert "pr2: speedup_ratio got 0.8333, limit >= 0.9" in result.output
    assert "pr: size_ratio" not in result.output  # what passed is not called a regression
    assert "--fail-on: 3 passed, 3 failed against baseline main" in result.stdout

    with pytest.raises(RegressionFailure) as excinfo:
        compare([tmp_path / "main", tmp_path / "pr"], thresholds=parse_fail_on(["accuracy_drop=0.002"])
                ).raise_on_failures()
    (check,) = excinfo.value.failures
    assert (check.run, check.key.name, check.limit, check.passed) == (str(tmp_path / "pr"), "accuracy_drop",
                                                                        0.002, False)
    assert check.got == pytest.approx(0.015625)


def test_no_regression_exits_0(runs):
    tmp_path, _ = runs
    result = invoke(tmp_path, "main", "pr", "--fail-on", "accuracy_drop=0.02,size_ratio=0.95,speedup_ratio=0.9")
    assert result.exit_code == 0, result.output
    assert "--fail-on: 3 passed, 0 failed against baseline main" in result.stdout
    # exactly at the limit passes (as gates do)
    exact = invoke(tmp_path, "main", "pr", "--fail-on", "accuracy_drop=0.015625")
    assert exact.exit_code == 0, exact.output


def test_baseline_selection(runs):
    tmp_path, write = runs
    listed = compare([tmp_path / "main", tmp_path / "pr"], baseline=tmp_path / "pr")
    assert [r.label for r in listed.runs] == [str(tmp_path / "main"), str(tmp_path / "pr")]
    assert listed.baseline is listed.runs[1] and listed.versus[1] is None
    assert listed.versus[0].size_ratio == pytest.approx(2600 / 9155)
    outside = compare([tmp_path / "pr", tmp_path / "pr2"], baseline=tmp_path / "main")
    assert [r.folder.name for r in outside.runs] == ["main", "pr", "pr2"]  # the baseline is shown first
    result = invoke(tmp_path, "pr", "pr2", "--baseline", "main", "--fail-on", "size_ratio=0.95")
    assert result.exit_code == 1 and "pr2: size_ratio" in result.output and "baseline main" in result.output


def test_markdown_format(runs):
    tmp_path, write = runs
    write("a|b", make_report())
    result = invoke(tmp_path, "main", "a|b", "--format", "markdown", "--fail-on", "size_ratio=0.9")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "## modelzip compare (baseline: `main`)"
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 4 and table[1] == "|" + "---|" * 9
    assert all(line.count(" | ") == 8 for line in table if line != table[1])  # `a\|b` keeps 9 cells
    assert table[3].startswith("| a\\|b | tiny | passed |")
    assert "- ✅ a|b: size_ratio got 1, limit >= 0.9" in result.stdout


def test_json_format(runs):
    tmp_path, _ = runs
    result = invoke(tmp_path, "main", "pr", "--format", "json", "--fail-on", "accuracy_drop=0.002")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["schema"] == "modelzip.compare/1" and data["baseline"] == "main"
    main, pr = data["runs"]
    assert main["baseline"] and main["vs_baseline"] is None
    assert pr["latency"]["batch_64"] == {"median_ms": 0.3, "speedup": 1.6667, "verdict": "faster"}
    assert pr["vs_baseline"]["speedup_ratio"] == pytest.approx(0.5 / 0.3) and pr["vs_baseline"]["batch"] == 64
    assert data["checks"] == [{"run": "pr", "key": "accuracy_drop", "got": pytest.approx(0.015625), "op": "<=",
                               "limit": 0.002, "passed": False}]


def test_speedup_ratio_only_where_both_have_latency(runs):
    tmp_path, write = runs
    write("nolat", make_report(ms64=None))
    comparison = compare([tmp_path / "main", tmp_path / "nolat"], thresholds=parse_fail_on(["speedup_ratio=2"]))
    (check,) = comparison.checks
    assert check.got is None and check.passed is None and comparison.failures == []
    assert any("not checked" in note for note in comparison.notes)
    result = invoke(tmp_path, "main", "nolat", "--fail-on", "speedup_ratio=2")
    assert result.exit_code == 0 and "1 not checked" in result.stdout


def test_notes_when_machines_differ(runs):
    tmp_path, write = runs
    other = make_report()
    other["environment"]["cpu_model"] = "another cpu"
    write("elsewhere", other)
    notes = compare([tmp_path / "main", tmp_path / "elsewhere"]).notes
    assert len(notes) == 1 and "compares machines too" in notes[0]


def _bad_cases(write):
    golden = make_report()
    no_ratio = copy.deepcopy(golden)
    del no_ratio["final"]["ratios"]["size"]
    text_acc = copy.deepcopy(golden)
    text_acc["final"]["accuracy"] = "high"
    zero = copy.deepcopy(golden)
    zero["final"]["size_bytes"] = 0
    bad_batch = copy.deepcopy(golden)
    bad_batch["final"]["latency"]["batch_x"] = {}
    return {
        "not-json": (write("not-json", "{ nope"), "cannot be read as JSON", None),
        "old-schema": (write("old-schema", {**golden, "schema": "modelzip.report/0"}), "schema",
                       "'modelzip.report/1'"),
        "a-list": (write("a-list", [1, 2]), "schema", "'modelzip.report/1'"),
        "no-ratio": (write("no-ratio", no_ratio), "final.ratios.size", "a finite number"),
        "text-acc": (write("text-acc", text_acc), "final.accuracy", "a finite number"),
        "zero-size": (write("zero-size", zero), "final.size_bytes", "a finite positive number"),
        "bad-batch": (write("bad-batch", bad_batch), "final.latency.batch_x", "batch_<n> keys and cached"),
    }


def test_bad_report_files_exit_2_with_where_got_expected(runs):
    tmp_path, write = runs
    (tmp_path / "empty").mkdir()
    cases = _bad_cases(write)
    cases["empty"] = (tmp_path / "empty", "no report.json", "a run folder with report.json")
    cases["missing"] = (tmp_path / "missing", "no report.json", "a run folder with report.json")
    for name, (folder, where_or_what, expected) in cases.items():
        with pytest.raises(InputError) as excinfo:
            read_run(folder)
        err = excinfo.value
        assert where_or_what in f"{err.where} {err.what}", (name, err.format())
        assert err.where.startswith(str(folder)) and err.got is not None and err.fix, name
        if expected is not None:
            assert err.expected == expected, (name, err.expected)
        result = invoke(tmp_path, "main", name)
        assert result.exit_code == 2, (name, result.output)
        assert "error: " in result.output and "Traceback" not in result.output, name
    bad_baseline = invoke(tmp_path, "main", "--baseline", "missing")
    assert bad_baseline.exit_code == 2 and "missing: no report.json" in bad_baseline.output


@pytest.mark.parametrize("item, fragment, fix", [
    ("acuracy_drop=0.01", "unknown --fail-on key 'acuracy_drop'", "did you mean 'accuracy_drop'?"),
    ("size_ratio=big", "--fail-on size_ratio needs a finite number", "e.g. size_ratio=0.95"),
    ("size_ratio=nan", "--fail-on size_ratio needs a finite number", "e.g. size_ratio=0.95"),
    ("size_ratio", "a --fail-on item is not KEY=VALUE", "e.g. --fail-on"),
    ("size_ratio=1,size_ratio=2", "--fail-on size_ratio is given twice", "keep one limit per key"),
])
def test_bad_fail_on_exits_2(runs, item, fragment, fix):
    with pytest.raises(InputError) as excinfo:
        parse_fail_on([item])
    err = excinfo.value
    assert fragment == err.what and err.where == "--fail-on" and err.got and fix in err.fix
    tmp_path, _ = runs
    result = invoke(tmp_path, "main", "pr", "--fail-on", item)
    assert result.exit_code == 2 and fragment in result.output, result.output


def test_unknown_key_lists_every_key():
    with pytest.raises(InputError) as excinfo:
        parse_fail_on(["frobnicate=1"])
    assert excinfo.value.expected == ", ".join(KEYS) == "accuracy_drop, size_ratio, zip_ratio, speedup_ratio"


def test_help_names_every_fail_on_key():
    result = runner.invoke(app, ["compare", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert all(key in result.stdout for key in KEYS)


def test_user_text_is_not_markup(runs):
    tmp_path, write = runs
    write("[bold red]x[b]", make_report())
    result = invoke(tmp_path, "main", "[bold red]x[b]")
    assert result.exit_code == 0 and "[bold red]x[b]" in result.stdout
