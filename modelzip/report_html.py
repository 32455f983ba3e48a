"""report.html: one run's report for a browser, rendered from report.json like report.md.

Self-contained (charts are inline SVG drawn by matplotlib; no script, no network), so it opens
offline and attaches to a CI run as it is. It holds the step table, charts of accuracy and size
after each step against the input model, the latency of the baseline and the final model at
each batch size (the distribution of run times as box plots, and the speedup's 95% interval), the per-layer tables
passes record, gates, warnings and the environment.

Drawing costs matplotlib's import and a few hundred milliseconds, too much for a fully cached
rerun: ``charts`` (the step cache) keeps each chart's SVG under a hash of what it shows, so an
unchanged run renders without importing matplotlib.
"""
from __future__ import annotations

import hashlib
import html
import io
import json
from collections.abc import Callable
from typing import Any, Protocol

from modelzip import report as md

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f4f4f4;text-align:left}td{text-align:right}td:first-child{text-align:left}
.pass{color:#1a7f37;font-weight:600}.fail{color:#c00;font-weight:600}.warn{color:#9a6700}
.charts{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}
"""
CHART_VERSION = "2"  # part of each chart's cache key: bump when the drawing code changes


class ChartMemo(Protocol):
    def recall(self, token: str) -> str | None: ...

    def remember(self, token: str, value: str) -> None: ...


def write_html(out, report: dict[str, Any], charts: ChartMemo | None = None) -> None:
    """report.html in ``out``; ``charts`` (the step cache) keeps the charts, so a cached rerun draws none."""
    from modelzip.atomic import write_text

    write_text(out / "report.html", render_html(report, charts))


def render_html(report: dict[str, Any], charts: ChartMemo | None = None) -> str:
    final, ratios = report["final"], report["final"]["ratios"]
    status = report["status"]
    headline = (f"final accuracy {md.percent(final['accuracy'])} ({100 * ratios['accuracy_delta']:+.2f} pp vs input)"
                f"{md.task_headline(report)}, "
                f"{md.megabytes(final['size_bytes'])} ({ratios['size']:.2f}x smaller, zip {ratios['zip_size']:.2f}x)")
    if ratios.get("speedup") is not None:
        headline += (f", {ratios['speedup']:.2f}x faster at batch {md.headline_batch(report)} "
                     f"({md.headline_verdict(report)})")
    body = [f"<h1>modelzip report: {_e(report['recipe']['name'])}</h1>",
            f"<p><span class='{'pass' if status == 'passed' else 'fail'}'>{_e(status)}</span> · {_e(headline)}</p>",
            "<h2>Steps</h2>", _table(md.summary_header(report), md.summary_rows(report)),
            "<div class='charts'>" + "".join(f"<figure>{chart}</figure>" for chart in _charts(report, charts))
            + "</div>"]
    if final.get("latency"):
        body += [f"<h2>Latency (onnxruntime CPU, {final['threads']} threads)</h2>",
                 _table(md.LATENCY_HEADER, md.latency_rows(report)), f"<p>{_e(md.LATENCY_NOTE)}</p>"]
    for step in report["steps"]:
        for table in step["details"].get("tables", []):
            body += [f"<h2>Step {step['index']}: {_e(step['pass'])}, {_e(table['title'])}</h2>",
                     _table(table["header"], table["rows"])]
    if report["gates"]:
        rows = [[g["name"], "pass" if g["passed"] else "FAIL", "n/a" if g["got"] is None else f"{g['got']:.4g}",
                 g["expected"]] for g in report["gates"]]
        body += ["<h2>Gates</h2>", _table(["gate", "result", "got", "expected"], rows)]
    if report.get("warnings"):
        body += ["<h2>Warnings</h2><ul>" + "".join(
            f"<li class='warn'>{_e(md.Finding.from_json(w).format())}</li>" for w in report["warnings"]) + "</ul>"]
    env = report["environment"]
    if report.get("deploy"):
        body += ["<h2>Deploy targets</h2>", _table(md.deploy_header(report), md.deploy_rows(report)),
                 "".join(f"<p>{_e(line)}</p>" for line in md.deploy_notes(report).splitlines())]
    body += ["<h2>Environment</h2>", _table(["key", "value"], [[k, _text(v)] for k, v in env.items()])]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>modelzip: {_e(report['recipe']['name'])}"
            f"</title><style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def _e(text: Any) -> str:
    return html.escape(str(text))


def _text(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# --------------------------------------------------------------------------- charts


def _charts(report: dict[str, Any], memo: ChartMemo | None) -> list[str]:
    steps = _step_points(report)
    charts = [("accuracy", {"steps": steps}, _accuracy_chart), ("size", {"steps": steps}, _size_chart)]
    pairs = (report["final"].get("latency") or {})
    latency = {k: v for k, v in pairs.items() if k.startswith("batch_")}
    if latency:
        charts.append(("latency", {"pairs": latency}, _latency_chart))
    return [_memoized(memo, name, data, draw) for name, data, draw in charts]


def _step_points(report: dict[str, Any]) -> list[dict[str, Any]]:
    """(label, accuracy or None, size, zip) for the input, the baseline ONNX and each step."""
    base = report["baseline"]
    points = [("input", base["torch"]), ("fp32 ONNX", base["onnx"])]
    points += [(f"{s['index']}: {s['pass']}", s["metrics"]) for s in report["steps"]]
    return [{"label": label, "accuracy": m.get("accuracy"), "size": m.get("size_bytes"), "zip": m.get("zip_bytes")}
            for label, m in points]


def _memoized(memo: ChartMemo | None, name: str, data: dict[str, Any], draw: Callable[[dict], str]) -> str:
    blob = json.dumps({"chart": name, "version": CHART_VERSION, "data": data}, sort_keys=True, default=str)
    token = "report-chart|" + hashlib.sha256(blob.encode()).hexdigest()
    found = memo.recall(token) if memo is not None else None
    if found is not None:
        return found
    svg = draw(data)
    if memo is not None:
        memo.remember(token, svg)
    return svg


def figure(size: tuple[float, float] = (5.2, 3.6)):
    """(pyplot, figure, axes) for an SVG chart: text kept as text, ids stable between runs."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "modelzip"})  # text as text; stable ids
    return plt, *plt.subplots(figsize=size)


def svg_of(plt, fig) -> str:
    """The figure as an ``<svg>`` element to inline in HTML (no XML prolog), then closed."""
    buffer = io.StringIO()
    try:
        fig.savefig(buffer, format="svg", bbox_inches="tight",
                    metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    finally:
        plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]  # no XML prolog inside HTML


def _accuracy_chart(data: dict[str, Any]) -> str:
    plt, fig, ax = figure()
    steps = data["steps"]
    xs = [i for i, s in enumerate(steps) if s["accuracy"] is not None]
    ax.plot(xs, [100 * steps[i]["accuracy"] for i in xs], marker="o", color="#1f77b4", label="after the step")
    reference = next((s for s in steps[:2] if s["accuracy"] is not None), None)  # torch, else its fp32 ONNX
    if reference is not None:
        ax.axhline(100 * reference["accuracy"], color="#888", linestyle="--", linewidth=1,
                   label=f"input model ({reference['label']})")
    skipped = [s["label"] for s in steps if s["accuracy"] is None]
    if skipped:
        ax.text(0.01, 0.02, "not evaluated: " + ", ".join(skipped), transform=ax.transAxes, fontsize=7)
    ax.set_xticks(range(len(steps)), [s["label"] for s in steps], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("accuracy after each step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return svg_of(plt, fig)


def _size_chart(data: dict[str, Any]) -> str:
    plt, fig, ax = figure()
    steps = data["steps"]
    xs = range(len(steps))
    ax.bar([x - 0.2 for x in xs], [(s["size"] or 0) / 1e6 for s in steps], width=0.4, color="#1f77b4", label="file")
    ax.bar([x + 0.2 for x in xs], [(s["zip"] or 0) / 1e6 for s in steps], width=0.4, color="#ff7f0e",
           label="zipped (ONNX only)")
    ax.set_xticks(list(xs), [s["label"] for s in steps], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("MB")
    ax.set_title("size after each step")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return svg_of(plt, fig)


def _latency_chart(data: dict[str, Any]) -> str:
    """Per batch, the baseline's and the final model's distribution of run times relative to the
    baseline's median (box: 25th-75th percentile, whiskers: 5th-95th, line: median; a bar to the
    median with a whisker to p90 where a record kept no quantiles), and the speedup with its 95%
    interval written above."""
    plt, fig, ax = figure()
    pairs = sorted(data["pairs"].items(), key=lambda kv: int(kv[0].removeprefix("batch_")))
    top = 1.0
    for i, (_, pair) in enumerate(pairs):
        scale = pair["baseline"]["median_ms"]
        for offset, side, color in ((-0.2, "baseline", "#7f7f7f"), (0.2, "final", "#2ca02c")):
            record, label = pair[side], side if i == 0 else None
            quantiles = [q / scale for q in record.get("quantiles_ms") or ()]
            if len(quantiles) == 5:
                ax.bxp([{"whislo": quantiles[0], "q1": quantiles[1], "med": quantiles[2], "q3": quantiles[3],
                         "whishi": quantiles[4], "label": ""}], positions=[i + offset], widths=0.3,
                       showfliers=False, patch_artist=True, boxprops={"facecolor": color},
                       medianprops={"color": "black"})
                ax.plot([], [], color=color, linewidth=8, label=label)  # a legend entry for the boxes
                top = max(top, quantiles[4])
            else:
                median, p90 = record["median_ms"] / scale, record["p90_ms"] / scale
                ax.bar(i + offset, median, width=0.3, color=color, label=label)
                ax.errorbar(i + offset, median, yerr=[[0], [max(p90 - median, 0)]], color="#333", capsize=4)
                top = max(top, p90)
        ax.text(i, top * 1.04, f"{pair['ratio']:.2f}x ({pair['ci_low']:.2f}-{pair['ci_high']:.2f})", ha="center",
                fontsize=8)
    ax.set_xticks(range(len(pairs)), [k.replace("_", " ") for k, _ in pairs])
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel("run time / baseline median")
    ax.set_title("latency distribution, interleaved in this run")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower right")
    return svg_of(plt, fig)
