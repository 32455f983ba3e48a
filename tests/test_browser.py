"""report.html and sweep.html in a real browser (issue 17): headless Chromium renders them, and
the check fails on a JavaScript error or a chart with nothing drawn in it.

`make test` installs Chromium (scripts/ensure_browser.sh) and sets MODELZIP_REQUIRE_BROWSER=1,
so CI cannot skip this; elsewhere it skips without Chromium. Set MODELZIP_SCREENSHOTS=DIR to
keep the screenshots (e.g. as CI artifacts).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from modelzip.sweep_html import write_sweep
from modelzip.sweep_points import SweepPoint, build_sweep

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DOT_BLUE = (31, 119, 180)  # matplotlib's C0: the dots of passed points
FRONT_GREEN = (44, 160, 44)  # the Pareto front's line; report.html: the final model's latency
ZIP_ORANGE = (255, 127, 14)  # report.html: the zipped-size bars; sweep.html: points whose gates failed
GOLDEN_REPORT = Path(__file__).parent / "golden" / "report_tiny.json"


def _browser() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        if os.environ.get("MODELZIP_REQUIRE_BROWSER") == "1":
            pytest.fail("headless Chromium is required here (MODELZIP_REQUIRE_BROWSER=1): apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return found


def render(page: Path, screenshot: Path) -> list[str]:
    """Screenshot ``page`` in headless Chromium; return the JavaScript errors it logged."""
    profile = screenshot.parent / f"{screenshot.stem}-profile"
    done = subprocess.run(
        [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", "--window-size=1400,1100",
         f"--screenshot={screenshot}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert screenshot.is_file(), f"Chromium wrote no screenshot (exit {done.returncode}):\n{done.stderr[-2000:]}"
    keep = os.environ.get("MODELZIP_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(keep) / screenshot.name)
    return [line for line in done.stderr.splitlines()
            if "CONSOLE" in line and re.search(r"Uncaught|Error", line)]


def colored_pixels(screenshot: Path, color: tuple[int, int, int], tolerance: int = 40) -> int:
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.int16)
    return int((np.abs(pixels - np.array(color)) <= tolerance).all(axis=-1).sum())


def _sweep(tmp_path: Path, measured: bool = True) -> Path:
    points = [SweepPoint(f"{i:02d}-target_macs={r}", f"target_macs={r}", {"target_macs": r}, str(tmp_path / f"p{i}"),
                         "gates_failed" if r == 0.6 else "passed", accuracy=acc if measured else None,
                         size_bytes=size if measured else None, speedup=speed if measured else None)
              for i, (r, acc, size, speed) in enumerate([(0.3, 0.86, 400_000, 2.6), (0.5, 0.89, 700_000, 1.9),
                                                         (0.8, 0.905, 1_500_000, 1.2), (0.6, 0.88, 900_000, 1.5)])]
    out = tmp_path / "sweep"
    write_sweep(out, build_sweep(points, recipe="prune_channel.yaml", grid={"target_macs": [0.3, 0.5, 0.6, 0.8]}))
    return out / "sweep.html"


def test_sweep_html_renders_with_charts_and_no_script_errors(tmp_path):
    shot = tmp_path / "sweep.png"
    errors = render(_sweep(tmp_path), shot)
    assert errors == []
    assert colored_pixels(shot, DOT_BLUE) > 200  # 6 dots of passed points (3 per chart) drawn
    assert colored_pixels(shot, ZIP_ORANGE) > 50  # 2 dots of the point whose gates failed
    assert colored_pixels(shot, FRONT_GREEN) > 200  # and the fronts


def test_the_check_catches_an_empty_chart(tmp_path):
    shot = tmp_path / "empty.png"
    render(_sweep(tmp_path, measured=False), shot)
    assert colored_pixels(shot, DOT_BLUE) < 20 and colored_pixels(shot, FRONT_GREEN) < 20


def test_the_check_catches_a_javascript_error(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><p>x</p><script>notDefinedAnywhere();</script></body></html>")
    assert render(page, tmp_path / "broken.png")


def test_report_html_renders_with_charts_and_no_script_errors(tmp_path):
    import json

    from modelzip.report_html import render_html

    page, shot = tmp_path / "report.html", tmp_path / "report.png"
    page.write_text(render_html(_numbers(json.loads(GOLDEN_REPORT.read_text()))))
    assert render(page, shot) == []
    assert colored_pixels(shot, DOT_BLUE) > 500  # accuracy line and file-size bars
    assert colored_pixels(shot, ZIP_ORANGE) > 200  # zipped-size bars


def _numbers(value, key: str | None = None):
    """The golden report with its placeholders ("<median_ms>") turned back into numbers."""
    if isinstance(value, dict):
        return {k: _numbers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and value.startswith("<") and key in _NUMERIC:
        return _NUMERIC[key]
    return value


_NUMERIC = {"median_ms": 1.0, "mean_ms": 1.1, "p90_ms": 1.3, "runs": 50, "threads": 2, "size": 1000,
            "wall_time_s": 0.5, "max_abs_diff": 1e-6, "cpu_count": 2, "quantiles_ms": [0.9, 0.95, 1.0, 1.05, 1.2]}
