"""CI outputs of `modelzip run`: --junit (the gates as JUnit XML) and $GITHUB_STEP_SUMMARY."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema
from typer.testing import CliRunner

from modelzip.ci import append_step_summary, junit_xml
from modelzip.cli import app
from modelzip.evaluation.records import GateResult
from tests.conftest import synthetic_recipe

runner = CliRunner()
JUNIT_SCHEMA = xmlschema.XMLSchema(Path(__file__).parent / "data" / "junit.xsd")


def check_junit_shape(text: str) -> ET.Element:
    """The common JUnit schema's shape: testsuites > testsuite > testcase (> failure), with counts that
    add up and attribute types as the schema declares (integers, decimal seconds, names)."""
    JUNIT_SCHEMA.validate(text)  # raises, naming the element and the rule broken
    root = ET.fromstring(text)
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1 and {c.tag for c in root} == {"testsuite"}
    for element in (root, *suites):
        for attr in ("tests", "failures", "errors"):
            assert int(element.get(attr)) >= 0, attr
        assert float(element.get("time")) >= 0 and element.get("name")
    suite = suites[0]
    cases = suite.findall("testcase")
    assert {c.tag for c in suite} <= {"properties", "testcase"}
    assert int(suite.get("tests")) == len(cases) == int(root.get("tests")) >= 1
    failed = [c for c in cases if c.find("failure") is not None]
    assert int(suite.get("failures")) == len(failed) == int(root.get("failures"))
    for case in cases:
        assert case.get("name") and case.get("classname") and float(case.get("time")) >= 0
        assert {c.tag for c in case} <= {"failure"}
        for failure in case.findall("failure"):
            assert failure.get("message") and failure.get("type")
    return suite


def test_junit_without_gates_has_one_passing_case():
    suite = check_junit_shape(junit_xml([], recipe="tiny", time_s=1.5))
    (case,) = suite.findall("testcase")
    assert case.get("name") == "run" and suite.get("failures") == "0" and suite.get("time") == "1.500"


@pytest.mark.parametrize("broken", [
    '<testsuites><testsuite tests="1"><testcase name="a"/></testsuite></testsuites>',  # a suite without name
    '<testsuites><testsuite name="s" tests="-1"/></testsuites>',  # a negative count
    '<testsuites><testsuite name="s" tests="1"><testcase name="a"/><properties/></testsuite></testsuites>',
    '<testsuites><testsuite name="s" tests="1"><testcase name="a" time="1s"/></testsuite></testsuites>',
])
def test_the_schema_refuses_what_ci_readers_refuse(broken):
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        JUNIT_SCHEMA.validate(broken)


def test_junit_escapes_user_text():
    gate = GateResult("min_accuracy", False, 0.5, '>= 0.9 <&"]]>')
    suite = check_junit_shape(junit_xml([gate], recipe="a<b>&c", time_s=0.0))
    failure = suite.find("testcase/failure")
    assert failure.text == 'got: 0.5\nexpected: >= 0.9 <&"]]>'
    assert suite.find("properties/property").get("value") == "a<b>&c"


def test_step_summary_appends_and_warns(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    assert append_step_summary("# one", env) is None and append_step_summary("# two\n", env) is None
    assert summary.read_text() == "earlier step\n# one\n# two\n"
    assert append_step_summary("# x", {}) is None and append_step_summary("# x", {"GITHUB_STEP_SUMMARY": ""}) is None
    warning = append_step_summary("# x", {"GITHUB_STEP_SUMMARY": str(tmp_path)})  # a directory
    assert warning and "GITHUB_STEP_SUMMARY" in warning and "not writable" in warning


def test_run_junit_with_a_failing_gate_and_step_summary_twice(tiny_checkpoint, recipe_file, tmp_path,
                                                             monkeypatch):
    """End to end on the tiny synthetic recipe: a failed gate is exit 1, and the JUnit file says which
    gate, with got and expected; each run appends its report.md to the job summary."""
    recipe = recipe_file(synthetic_recipe("  - export: {}", checkpoint="tiny.pt", evaluation="{latency: false}")
                         + "gates: {min_accuracy: 0.99, min_size_ratio: 0.5}\n")
    summary = tmp_path / "summary.md"
    summary.write_text("before\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    junit = tmp_path / "ci" / "gates.xml"
    for attempt in (1, 2):  # the second run is all cached
        result = runner.invoke(app, ["run", str(recipe), "--quiet", "--junit", str(junit)])
        assert result.exit_code == 1, (attempt, result.output)
        assert "min_accuracy" in result.output
    suite = check_junit_shape(junit.read_text())
    assert suite.get("name") == "modelzip.gates" and suite.get("tests") == "2" and suite.get("failures") == "1"
    accuracy, size = suite.findall("testcase")
    assert (accuracy.get("name"), size.get("name")) == ("min_accuracy", "min_size_ratio")
    assert size.find("failure") is None
    failure = accuracy.find("failure")
    assert failure.get("message").startswith("min_accuracy: got ") and ">= 0.99" in failure.text
    report_md = (tmp_path / "out" / "report.md").read_text()
    text = summary.read_text()  # appended, never truncated: the first run's report, then the cached rerun's
    assert text.startswith("before\n# modelzip report: tiny") and text.endswith(report_md)
    assert text.count("# modelzip report: tiny") == 2 and "(cached)" in report_md


def test_unwritable_step_summary_is_a_warning(tiny_checkpoint, recipe_file, tmp_path, monkeypatch):
    recipe = recipe_file(synthetic_recipe("  - export: {}", checkpoint="tiny.pt", evaluation="{latency: false}"))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path))  # a directory: cannot be appended to
    result = runner.invoke(app, ["run", str(recipe), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "warning: GITHUB_STEP_SUMMARY=" in result.output


def test_an_unwritable_junit_path_never_hides_a_failed_gate(tiny_checkpoint, recipe_file, tmp_path):
    """--junit into a directory that is a file: a failed gate still exits 1; no gates failing, exit 2."""
    (tmp_path / "blocker").write_text("a file where a directory should be")
    junit = tmp_path / "blocker" / "gates.xml"
    body = synthetic_recipe("  - export: {}", checkpoint="tiny.pt", evaluation="{latency: false}")
    failing = recipe_file(body + "gates: {min_accuracy: 0.99}\n")
    result = runner.invoke(app, ["run", str(failing), "--quiet", "--junit", str(junit)])
    assert result.exit_code == 1, result.output
    assert "--junit" in result.output and "min_accuracy" in result.output
    passing = recipe_file(body, name="passing.yaml")
    result = runner.invoke(app, ["run", str(passing), "--quiet", "--junit", str(junit)])
    assert result.exit_code == 2, result.output
