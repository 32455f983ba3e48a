"""sweep.html: the sweep's trade-off as two charts (accuracy vs size, accuracy vs latency) with
the Pareto fronts, and a table of every point, each linked to its run.

Self-contained: the charts are inline SVG drawn by matplotlib (no script, no network), so the
file opens offline and attaches to a CI run as it is. matplotlib is imported here only, never
on the path of `validate` or `--help`.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from modelzip.atomic import write_text
from modelzip.sweep_points import FRONTS, SweepPoint, pareto_front, points_from_json

SWEEP_JSON = "sweep.json"
SWEEP_HTML = "sweep.html"

_AXES = {"size": ("file size (MB)", 1e-6), "latency": ("latency at data.batch_size (x the fp32 baseline)", 1.0)}
_STATUS_COLOR = {"passed": "#1f77b4", "gates_failed": "#ff7f0e"}
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,td:nth-child(2),th{text-align:left}tr.front{font-weight:600}.error{color:#b00}
.charts{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}
"""


def write_sweep(out: Path, sweep: dict[str, Any]) -> tuple[Path, Path]:
    """sweep.json and sweep.html in ``out`` (each written atomically)."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / SWEEP_JSON, out / SWEEP_HTML
    write_text(json_path, json.dumps(sweep, indent=1) + "\n")
    write_text(html_path, render_sweep_html(sweep, out))
    return json_path, html_path


def render_sweep_html(sweep: dict[str, Any], out: Path) -> str:
    points = points_from_json(sweep)
    charts = "".join(f"<figure>{_chart(points, name, out)}</figure>" for name in FRONTS)
    counts = ", ".join(f"{n} {status}" for status, n in sweep["counts"].items() if n)
    grid = "; ".join(f"<code>{html.escape(k)}</code> = {html.escape(', '.join(map(str, v)))}"
                     for k, v in sweep["grid"].items())
    wall = f", {sweep['wall_time_s']:.1f} s" if sweep.get("wall_time_s") else ""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>modelzip sweep</title>"
            f"<style>{_STYLE}</style></head><body><h1>Sweep{_recipe(sweep)}</h1>"
            f"<p>{len(points)} points ({counts}{wall}). Grid: {grid or '-'}.</p>"
            f"<p>Pareto front: no other point is at least as accurate and at least as small (or fast), "
            f"better in one. Latency is each run's speedup over its own fp32 baseline, measured "
            f"interleaved within the run.</p>"
            f"<div class='charts'>{charts}</div>{_table(points, out)}</body></html>\n")


def _recipe(sweep: dict[str, Any]) -> str:
    return f": <code>{html.escape(sweep['recipe'])}</code>" if sweep.get("recipe") else ""


def _link(point: SweepPoint, out: Path) -> str:
    folder = Path(point.folder)
    page = "report.html" if (folder / "report.html").is_file() else "report.md"
    return Path(os.path.relpath(folder / page, out)).as_posix()


def _chart(points: list[SweepPoint], front_name: str, out: Path) -> str:
    from modelzip.report_html import figure, svg_of

    cost = FRONTS[front_name]
    title, scale = _AXES[front_name]
    shown = [p for p in points if p.measured and cost(p) is not None]
    plt, fig, ax = figure((6, 4.2))
    for status, color in _STATUS_COLOR.items():
        group = [p for p in shown if p.status == status]
        if group:
            dots = ax.scatter([cost(p) * scale for p in group], [100 * p.accuracy for p in group], color=color,
                              label="gates failed" if status == "gates_failed" else "passed", zorder=3)
            dots.set_urls([_link(p, out) for p in group])  # each dot opens its run's report
    front = pareto_front(shown, cost)
    if front:
        ax.step([cost(p) * scale for p in front], [100 * p.accuracy for p in front], where="post",
                color="#2ca02c", label="Pareto front", zorder=2)
    for p in shown:
        ax.annotate(p.label, (cost(p) * scale, 100 * p.accuracy), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    if not shown:
        ax.text(0.5, 0.5, f"no point measured {front_name}", ha="center", transform=ax.transAxes)
    ax.set_xlabel(title)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"accuracy vs {front_name}")
    ax.grid(alpha=0.3)
    if shown:
        ax.legend(fontsize=8)
    return svg_of(plt, fig)


def _table(points: list[SweepPoint], out: Path) -> str:
    head = ("point", "swept", "status", "accuracy", "vs input", "size MB", "zip MB", "speedup", "front")
    rows = []
    for p in points:
        fronts = ", ".join(name for name, on in p.pareto.items() if on)
        if p.status == "error":
            cells = [f"<td class='error' colspan='7'>{html.escape(p.error or 'failed')}</td>"]
        else:
            cells = [f"<td>{v}</td>" for v in (
                p.status, _percent(p.accuracy), _pp(p.accuracy_delta), _mb(p.size_bytes), _mb(p.zip_bytes),
                "-" if p.speedup is None else f"{p.speedup:.2f}x", fronts or "-")]
        name = f"<a href='{html.escape(_link(p, out))}'>{html.escape(p.name)}</a>" if p.status != "error" \
            else html.escape(p.name)
        rows.append(f"<tr class='{'front' if fronts else ''}'><td>{name}</td><td>{html.escape(p.label)}</td>"
                    + "".join(cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


def _percent(accuracy: float | None) -> str:
    return "-" if accuracy is None else f"{100 * accuracy:.2f}%"


def _pp(delta: float | None) -> str:
    return "-" if delta is None else f"{100 * delta:+.2f} pp"


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.3f}"
