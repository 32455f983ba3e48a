"""The output folder's final files, committed together at the end of a run.

A run stages model.onnx, recipe.resolved.yaml, report.md, report.html and report.json
(and model.names.json when the final step shortened names) in
``<output>/.staging/`` and moves them into place only when all are written:
report.json goes last and is removed first, so its presence marks a complete
set from one run. It records the sha256 of the files beside it ("files"), so
a reader (or a test) can check the set: model hash and report always match.
An interrupted run leaves the previous complete set, or no report.json; it
never leaves a new model beside an old report.
"""
from __future__ import annotations

import os
from pathlib import Path

from modelzip.atomic import TMP_SUFFIX, copy_file, remove_tree, write_text
from modelzip.cache import file_record, file_sha256

MODEL = "model.onnx"
RESOLVED_RECIPE = "recipe.resolved.yaml"
NAME_MAP = "model.names.json"  # the optimize step's old -> new names of model.onnx, when there is one
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
# report.json is the commit marker: moved in last.
FINAL_FILES = (MODEL, RESOLVED_RECIPE, REPORT_MD, REPORT_HTML, REPORT_JSON)
OPTIONAL_FILES = (NAME_MAP,)  # committed when staged; an earlier run's copy is removed when not
STAGING = ".staging"
DEPLOY = "deploy"  # the deploy targets' folders (report.json's "deploy" lists their files and digests)


class RunFolder:
    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.staging = self.out / STAGING

    def prepare(self) -> None:
        """Start from a clean staging area; drop temporary files an interrupted run left."""
        self.out.mkdir(parents=True, exist_ok=True)
        remove_tree(self.staging)
        for leftover in self.out.glob(f".*{TMP_SUFFIX}"):
            remove_tree(leftover)
        self.staging.mkdir()

    def stage_text(self, name: str, text: str) -> None:
        write_text(self.staging / name, text)

    def stage_copy(self, name: str, source: Path) -> None:
        copy_file(source, self.staging / name)

    def digests(self, *names: str) -> dict[str, dict[str, object]]:
        """Size and sha256 of staged files, for report.json's "files"."""
        return {name: file_record(self.staging / name) for name in names}

    def commit(self) -> None:
        """Move the staged set into place, report.json last (see the module doc)."""
        (self.out / REPORT_JSON).unlink(missing_ok=True)
        for name in OPTIONAL_FILES:  # never an earlier run's name map beside this run's model
            if (self.staging / name).is_file():
                os.replace(self.staging / name, self.out / name)
            else:
                (self.out / name).unlink(missing_ok=True)
        # deploy/<target>/ (modelzip.deploy): this run's targets replace an earlier run's, or none stay.
        remove_tree(self.out / DEPLOY)
        if (self.staging / DEPLOY).is_dir():
            os.replace(self.staging / DEPLOY, self.out / DEPLOY)
        for name in FINAL_FILES:
            os.replace(self.staging / name, self.out / name)
        remove_tree(self.staging)


def check_consistent(out: Path) -> str | None:
    """None when ``out`` holds no report.json or a complete set that matches it; else the problem."""
    import json

    report_path = Path(out) / REPORT_JSON
    if not report_path.is_file():
        return None
    try:
        report = json.loads(report_path.read_text())
        files = report["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "report.json is unreadable or lists no files"
    for name, expected in files.items():
        path = Path(out) / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != expected["sha256"]:
            return f"{name} does not match report.json"
    if set(files) - set(OPTIONAL_FILES) != {MODEL, RESOLVED_RECIPE}:
        return f"report.json lists {sorted(files)}"
    for name in OPTIONAL_FILES:
        if name not in files and (Path(out) / name).exists():
            return f"{name} is not listed in report.json"
    from modelzip.report import render_markdown

    markdown = Path(out) / REPORT_MD
    if not markdown.is_file() or markdown.read_text() != render_markdown(report):
        return "report.md does not match report.json"
    return None
