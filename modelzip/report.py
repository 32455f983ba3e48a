"""report.json (stable schema for CI), report.md (for pull requests) and report.html (report_html).

report.json is ``modelzip.evaluation.records.Report.to_json()``; the schema is documented in
docs/report.md; bump ``records.REPORT_SCHEMA`` on breaking changes. report.md and the terminal
tables are rendered from report.json, so a report on disk can be checked against its markdown.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelzip.atomic import write_text
from modelzip.evaluation.latency import EQUIVALENCE_MARGIN, MIN_SPAN, REPEATS, TIGHT, TIME_CAP
from modelzip.evaluation.records import Finding, LatencyResult, Unchecked


def write_report(out: Path, report: dict[str, Any]) -> None:
    """report.json (``Report.to_json()``) and report.md rendered from it (report.html: report_html)."""
    write_text(out / "report.json", json.dumps(report, indent=2, sort_keys=False) + "\n")
    write_text(out / "report.md", render_markdown(report))


def percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def megabytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.3f} MB"


def _count(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.3f} M" if n >= 1e5 else f"{n:,}"


def task_names(report: dict[str, Any]) -> list[str]:
    """A multi-task model's tasks (report.json's per-task accuracies); [] for a single-task model."""
    return list(report["baseline"]["onnx"].get("task_accuracy") or {})


def summary_header(report: dict[str, Any]) -> list[str]:
    """SUMMARY_HEADER, with a column per task after "accuracy" for a multi-task model."""
    return SUMMARY_HEADER[:3] + [f"{t} accuracy" for t in task_names(report)] + SUMMARY_HEADER[3:]


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per measured artifact: name, backend, accuracy (and each task's), params (non-zero),
    MACs, size, time."""
    rows = []
    base = report["baseline"]
    optimized = base.get("optimize")  # absent from a report.json written before the optimize step
    reference = ("" if base.get("accuracy_reference") != "onnx"
                 else "an ONNX file (model.source): the accuracy reference is its measurement below"
                 if base.get("export") is None
                 else "the accuracy reference is the fp32 ONNX below (the export's parity check ties the two)")
    rows.append(_row("input model", base["torch"], None, cached=False, note=reference))
    rows.append(_row("baseline fp32 ONNX", base["onnx"], None, cached=False,
                     note=f"optimized as the final file: {optimized['summary']}" if optimized else ""))
    for step in report["steps"]:
        label = f"{step['index']}: {step['pass']}" + (" (implicit)" if step.get("implicit") else "")
        rows.append(_row(label, step["metrics"], step["wall_time_s"], cached=step["cached"],
                         note=str(step["details"].get("summary", ""))))
    tasks = task_names(report)
    if tasks:
        metrics = [base["torch"], base["onnx"], *(step["metrics"] for step in report["steps"])]
        rows = [row[:3] + [_task_cell(m, t) for t in tasks] + row[3:] for row, m in zip(rows, metrics)]
    return rows


def _task_cell(metrics: dict[str, Any], task: str) -> str:
    accuracy = (metrics.get("task_accuracy") or {}).get(task)
    return "n/a" if accuracy is None else percent(accuracy)


def task_headline(report: dict[str, Any]) -> str:
    """" · left 90.10% (-0.20 pp), right ..." for a multi-task model; "" for a single-task one."""
    final = report["final"]
    deltas = final["ratios"].get("task_accuracy_delta") or {}
    return "".join(f" · {t} {percent(a)} ({100 * deltas[t]:+.2f} pp)"
                   for t, a in (final.get("task_accuracy") or {}).items() if t in deltas)


NOT_EVALUATED = "not evaluated (evaluation.steps: final)"


def _row(label: str, m: dict[str, Any], wall: float | None, *, cached: bool, note: str) -> list[str]:
    params = f"{_count(m['params_nonzero'])} / {_count(m['params_total'])}"
    time_s = "" if wall is None else f"{wall:.1f}s" + (" (cached)" if cached else "")
    accuracy = NOT_EVALUATED if m["accuracy"] is None else percent(m["accuracy"])
    return [label, m["accuracy_backend"], accuracy, params, _count(m["macs"]), megabytes(m["size_bytes"]), time_s, note]


STEPS_NOTE = ("Accuracy was evaluated for the input model (as its fp32 ONNX export) and the final model only "
              "(`evaluation.steps: final`); `--set evaluation.steps=all` evaluates every step, reusing the "
              "cached steps.")


SUMMARY_HEADER = ["artifact", "backend", "accuracy", "params non-zero / total", "MACs", "size", "pass time",
                  "notes"]


def latency_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per batch size: both medians / p90s, the speedup with its interval, the verdict."""
    rows = []
    for pair in _latency(report).pairs:
        b, f = pair.baseline, pair.final
        final_ms = f"{f.median_ms:.3f} / {f.p90_ms:.3f}"
        if pair.same_model:
            rows.append([f"batch {pair.batch}", "same file as the final model", final_ms,
                         "1.00x same model (byte-identical, measured once)", "-"])
            continue
        stopped = f" ({STOPPED[pair.stopped]})" if pair.stopped in STOPPED else ""
        rows.append([f"batch {pair.batch}", f"{b.median_ms:.3f} / {b.p90_ms:.3f}", final_ms,
                     f"{pair.ratio:.2f}x ({pair.ci_low:.2f}-{pair.ci_high:.2f}) {pair.verdict}",
                     f"{pair.pairs}{stopped}"])
    return rows


# Why timing stopped (latency.STOP_REASONS), as report.md says it.
STOPPED = {TIGHT: "interval tight", REPEATS: "all repeats", TIME_CAP: "~3 s cap", MIN_SPAN: "0.1 s floor"}


def _latency(report: dict[str, Any]) -> LatencyResult:
    """The final latency record of a report.json (no pairs when latency was not measured)."""
    return LatencyResult.from_json(report["final"].get("latency") or {})


LATENCY_HEADER = ["batch", "baseline ms (median / p90)", "final ms (median / p90)",
                  "speedup (95% interval), verdict", "paired runs (stopped by)"]
LATENCY_NOTE = (f"Speedup = baseline median / final median. The verdict says faster or SLOWER only when the "
                f"whole 95% interval (bootstrap over the interleaved rounds) lies beyond "
                f"{EQUIVALENCE_MARGIN:.2f}x or 1/{EQUIVALENCE_MARGIN:.2f}x; else within noise.")


def _latency_note(report: dict[str, Any]) -> str:
    tolerance = report.get("evaluation", {}).get("latency_tolerance")
    if not tolerance:
        return LATENCY_NOTE
    return (f"{LATENCY_NOTE} Timing stops early once the interval lies within ±{100 * tolerance:g}% of the "
            "speedup (`evaluation.latency_tolerance`), else after `evaluation.repeats` runs, fewer where they "
            "would pass ~3 s, more where they would not fill 0.1 s.")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    final, ratios, env = report["final"], report["final"]["ratios"], report["environment"]
    status = "✅ passed" if report["status"] == "passed" else "❌ gates failed"
    parts = [
        f"# modelzip report: {report['recipe']['name']}",
        f"**{status}** · final accuracy {percent(final['accuracy'])} "
        f"({100 * ratios['accuracy_delta']:+.2f} pp vs input){task_headline(report)} · "
        f"size {megabytes(final['size_bytes'])} ({ratios['size']:.2f}x smaller, zip {ratios['zip_size']:.2f}x)"
        + (f" · speedup {ratios['speedup']:.2f}x at batch {headline_batch(report)} ({headline_verdict(report)})"
           if "speedup" in ratios else ""),
        "## Steps", _table(summary_header(report), summary_rows(report)),
    ]
    if report.get("evaluation", {}).get("steps") == "final":
        parts.append(STEPS_NOTE)
    parts += _step_tables(report)
    if final.get("latency"):
        cached = " (cached from an earlier run; --no-cache measures again)" if final["latency"].get("cached") else ""
        parts += ["## Latency (onnxruntime CPU, "
                  f"{final['threads']} threads, baseline = fp32 ONNX of the input model){cached}",
                  _table(LATENCY_HEADER, latency_rows(report)), _latency_note(report)]
    if report.get("deploy"):
        parts += ["## Deploy targets", _table(deploy_header(report), deploy_rows(report)), deploy_notes(report)]
    if report["gates"]:
        gate_rows = [[g["name"], "pass" if g["passed"] else "**FAIL**",
                      "n/a" if g["got"] is None else f"{g['got']:.4g}", g["expected"]] for g in report["gates"]]
        parts += ["## Gates", _table(["gate", "result", "got", "expected"], gate_rows)]
    if report.get("warnings"):  # absent from a report.json written before warnings existed
        parts += ["## Warnings", "\n".join(f"- {Finding.from_json(w).format()}" for w in report["warnings"])]
    if report.get("unchecked"):
        parts += ["## Not checked", "\n".join(f"- {Unchecked.from_json(u).format()}" for u in report["unchecked"])]
    parts += ["## Environment", _environment_line(env), _export_parity_line(report["baseline"].get("export"))]
    return "\n\n".join(parts) + "\n"


def _export_parity_line(export: dict[str, Any] | None) -> str:
    if export is None:
        return "The input model is an ONNX file: nothing was exported."
    parity = export["parity"]
    return (f"Parity of the baseline export: max |diff| {parity['max_abs_diff']:.2e} "
            f"(tolerance atol {parity['atol']}, rtol {parity['rtol']}).")


def _step_tables(report: dict[str, Any]) -> list[str]:
    """The tables passes recorded with ``ctx.record_table``, each under its step's heading."""
    parts = []
    for step in report["steps"]:
        for table in step["details"].get("tables", []):
            parts += [f"## Step {step['index']}: {step['pass']}, {table['title']}",
                      _table(table["header"], table["rows"])]
    return parts


def headline_verdict(report: dict[str, Any]) -> str:
    pair = _latency(report).headline
    return pair.verdict if pair is not None else "not measured"


def headline_batch(report: dict[str, Any]) -> str:
    """The batch size the headline speedup is at: data.batch_size, the largest measured."""
    batches = [p.batch for p in _latency(report).pairs]
    return str(max(batches, default=1))


def _environment_line(env: dict[str, Any]) -> str:
    keys = ("python", "torch", "onnx", "onnxruntime", "modelzip")
    versions = ", ".join(f"{k} {env.get(k)}" for k in keys if env.get(k))
    return f"{env.get('cpu_model', 'unknown CPU')} ({env.get('cpu_count')} cores; flags: " \
           f"{', '.join(env.get('cpu_flags', [])) or 'n/a'}); {versions}."


# --------------------------------------------------------------------------- deploy targets

DEPLOY_NOTE = ("Each target runs in its own runtime on the eval split. Accuracy is compared with the final ONNX "
               "in onnxruntime; parity with the ONNX the target was converted from, on the same images at batch 1 "
               "and at the recipe's batch (float: the largest |difference| of any output; int8: top-1 agreement). "
               "Latency: the target's median ms against the final ONNX's in onnxruntime, measured interleaved in "
               "the same run at the same thread count, and the speedup (> 1: the target is faster).")


def deploy_header(report: dict[str, Any]) -> list[str]:
    batches = _deploy_batches(report)
    return (["target", "precision", "runtime", "converted from", "size (zip)", "accuracy (vs ONNX)", "parity"]
            + [f"batch {b}: ms vs ONNX ms (speedup)" for b in batches] + ["status"])


def _deploy_batches(report: dict[str, Any]) -> list[str]:
    return [str(p.batch) for p in _latency(report).pairs] or ["1"]


def deploy_rows(report: dict[str, Any]) -> list[list[str]]:
    """The final ONNX, then one row per deploy target (report.json's "deploy")."""
    final, batches = report["final"], _deploy_batches(report)
    onnx_latency = {str(p.batch): f"{p.final.median_ms:.3f}" for p in _latency(report).pairs}
    rows = [["ONNX (final model.onnx)", "as the passes left it", "onnxruntime", "-",
             _size_zip(final["size_bytes"], final.get("zip_bytes")), percent(final["accuracy"]), "-",
             *[onnx_latency.get(b, "n/a") for b in batches], "reference"]]
    for d in report["deploy"]:
        delta = "" if d.get("accuracy_delta") is None else f" ({100 * d['accuracy_delta']:+.2f} pp)"
        accuracy = "n/a" if d.get("accuracy") is None else percent(d["accuracy"]) + delta
        rows.append([d["target"], d["precision"], d["runtime"], d["converted_from"],
                     _size_zip(d.get("size_bytes"), d.get("zip_bytes")), accuracy, _parity_cell(d.get("parity")),
                     *[_target_latency((d.get("latency") or {}).get(f"batch_{b}")) for b in batches], _status(d)])
    return rows


def _size_zip(size: int | None, zipped: int | None) -> str:
    return "n/a" if size is None else f"{megabytes(size)} ({megabytes(zipped)})"


def _parity_cell(parity: dict[str, Any] | None) -> str:
    if not parity:
        return "n/a"
    mark = "" if parity["passed"] else "**FAIL** "
    if parity["measure"] == "max_abs_diff":
        return f"{mark}max abs diff {parity['worst']:.2e} (bar {parity['limit']:g})"
    return f"{mark}top-1 agreement {100 * parity['worst']:.2f}% (bar {100 * parity['limit']:g}%)"


def _target_latency(pair: dict[str, Any] | None) -> str:
    if not pair:
        return "n/a"
    return (f"{pair['final']['median_ms']:.3f} vs ONNX {pair['baseline']['median_ms']:.3f} "
            f"({pair['ratio']:.2f}x, {pair['verdict']})")


def _status(d: dict[str, Any]) -> str:
    return {"passed": "passed", "parity_failed": "**PARITY FAILED**", "conversion_failed": "**CONVERSION FAILED**",
            "run_failed": "**RUNTIME FAILED**", "not_measured": "converted, not measured here"}.get(d["status"],
                                                                                                   d["status"])


def deploy_notes(report: dict[str, Any]) -> str:
    """The table's explanation, then one line per target that failed, was not run, or had attempts refused."""
    lines = [DEPLOY_NOTE]
    for d in report["deploy"]:
        if d.get("error"):
            lines.append(f"- {d['target']}: {d['error']['what']}" + (f" (fix: {d['error']['fix']})"
                                                                      if d["error"].get("fix") else ""))
        if d.get("note"):
            lines.append(f"- {d['target']}: {d['note']}")
        details = d.get("details", {})
        if details.get("inference_precision"):
            lines.append(f"- {d['target']}: ran at inference precision {details['inference_precision']}; "
                         f"converter: {details.get('converter', 'n/a')}")
        elif details.get("converter"):  # e.g. tflite: its quantization and the batches its file was fixed at
            batches = ", ".join(str(b) for b in details.get("signatures", {}).values())
            lines.append(f"- {d['target']}: converter: {details['converter']}"
                         + "".join(f"; {part}" for part in (details.get("quantization"), details.get("layout"))
                                   if part)
                         + (f"; fixed batches {batches} (one signature each)" if batches else ""))
        refused = [*d.get("blocked", []), *details.get("converter_blocked", [])]
        if refused:
            lines.append(f"- {d['target']}: refused during conversion (kept offline): {'; '.join(refused)}")
    return "\n".join(lines)
