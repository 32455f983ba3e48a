"""What `modelzip run` gives a CI system besides the exit code: the gates as JUnit XML, and
report.md appended to GitHub's job summary ($GITHUB_STEP_SUMMARY)."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from modelzip.atomic import write_text
from modelzip.evaluation.records import GateResult

SUITE = "modelzip.gates"
STEP_SUMMARY = "GITHUB_STEP_SUMMARY"


def junit_xml(gates: list[GateResult] | tuple[GateResult, ...], *, recipe: str, time_s: float) -> str:
    """One testsuite ``modelzip.gates``, one testcase per gate (a failed gate is a <failure> with
    got and expected). Without gates, one passing testcase "run": the file is never empty."""
    failures = sum(not g.passed for g in gates)
    cases = len(gates) or 1
    counts = {"tests": str(cases), "failures": str(failures), "errors": "0", "time": f"{time_s:.3f}"}
    root = ET.Element("testsuites", {"name": "modelzip", **counts})
    # `skipped` belongs to <testsuite> only: Jenkins' schema refuses it on <testsuites>.
    suite = ET.SubElement(root, "testsuite", {"name": SUITE, **counts, "skipped": "0"})
    ET.SubElement(ET.SubElement(suite, "properties"), "property", {"name": "recipe", "value": recipe})
    for gate in gates or (GateResult("run", True, None, "the recipe ran (it sets no gates)"),):
        case = ET.SubElement(suite, "testcase", {"name": gate.name, "classname": f"{SUITE}.{recipe}",
                                                 "time": "0"})
        if not gate.passed:
            failure = ET.SubElement(case, "failure", {"message": gate.format(), "type": "GateFailure"})
            got = "n/a" if gate.got is None else repr(gate.got)
            failure.text = f"got: {got}\nexpected: {gate.expected}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: Path, gates: list[GateResult] | tuple[GateResult, ...], *, recipe: str,
                time_s: float) -> None:
    """Atomically: a CI step reading the file never sees half of it."""
    write_text(Path(path), junit_xml(gates, recipe=recipe, time_s=time_s))


def append_step_summary(markdown: str, environ: dict[str, str] | None = None) -> str | None:
    """Append ``markdown`` to $GITHUB_STEP_SUMMARY when it is set (never truncate: other steps
    write there too). Returns a warning when the file cannot be written (the run still counts)."""
    target = (os.environ if environ is None else environ).get(STEP_SUMMARY)
    if not target:
        return None
    try:
        with open(target, "a", encoding="utf-8") as summary:
            summary.write(markdown if markdown.endswith("\n") else markdown + "\n")
    except OSError as exc:
        return f"{STEP_SUMMARY}={target!r} is not writable ({exc.strerror or exc}); the job summary was not written"
    return None
