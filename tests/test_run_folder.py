"""One run per output folder, committed as a unit; SIGTERM and SIGKILL leave it consistent.

These start real `modelzip run` processes (a few seconds each). `scripts/kill_test.py`
runs the kill test with more kills (20) for the figures in the issue notes.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from modelzip.locking import LOCK_FILE
from modelzip.run_folder import REPORT_JSON, check_consistent
from modelzip.zoo import tiny_cnn
from tests.conftest import synthetic_recipe, write_recipe

# Long enough (several seconds of training) that a second run starts while the first holds the folder.
SLOW = synthetic_recipe("  - finetune: {epochs: 3, augment: none}\n  - export: {}\n", checkpoint="tiny.pt",
                        data_args="{train: 3072, eval: 256}")
OTHER = synthetic_recipe("  - export: {}\n", name="other", checkpoint="tiny.pt")


def prepare(directory: Path, body: str = SLOW, name: str = "recipe.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "tiny.pt").exists():
        torch.manual_seed(0)
        torch.save(tiny_cnn(num_classes=4).state_dict(), directory / "tiny.pt")
    return write_recipe(directory, body, name)


def command(recipe: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "modelzip", "run", str(recipe), "--quiet", *extra]


def start(recipe: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(command(recipe, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_lock(out: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until ``process`` holds the output folder's lock (it writes its pid there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (out / LOCK_FILE).read_text().strip() == str(process.pid):
                return
        except OSError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"the run ended before taking the lock: {process.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("the run never took the lock")


def kill_and_rerun(recipe: Path, delay: float, *, no_cache: bool) -> str | None:
    """SIGKILL a run after ``delay`` s, check the folder, rerun to the end, check again.

    Returns None when all is well, else what went wrong.
    """
    out = recipe.parent / "out"
    process = start(recipe, *(["--no-cache"] if no_cache else []))
    time.sleep(delay)
    process.kill()
    process.communicate()
    problem = check_consistent(out)
    if problem:
        return f"after SIGKILL at {delay:.2f}s: {problem}"
    rerun = subprocess.run(command(recipe), capture_output=True, text=True)
    if rerun.returncode != 0:
        return f"rerun after SIGKILL at {delay:.2f}s exited {rerun.returncode}: {rerun.stderr[-2000:]}"
    if not (out / REPORT_JSON).is_file():
        return "the rerun wrote no report.json"
    return check_consistent(out)


def test_second_run_into_a_busy_folder_is_refused_and_wait_queues(tmp_path):
    recipe = prepare(tmp_path)
    other = prepare(tmp_path, OTHER, "other.yaml")
    out = tmp_path / "out"
    first = start(recipe)
    wait_for_lock(out, first)
    refused = subprocess.run(command(other), capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    assert "another modelzip run is using this output folder" in refused.stderr
    assert f"pid {first.pid}" in refused.stderr and "--wait" in refused.stderr
    assert "Traceback" not in refused.stderr
    queued = start(other, "--wait")
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert queued.wait(timeout=300) == 0, queued.stderr.read()
    assert check_consistent(out) is None
    import json

    report = json.loads((out / REPORT_JSON).read_text())
    assert report["recipe"]["name"] == "other"  # the queued run committed last, as a whole
    assert "name: other" in (out / "recipe.resolved.yaml").read_text()


def test_sigterm_unwinds_like_ctrl_c_and_the_rerun_resumes(tmp_path):
    recipe = prepare(tmp_path)
    process = start(recipe)
    wait_for_lock(tmp_path / "out", process)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "SIGTERM" in stderr and "Traceback" not in stderr
    assert not list((tmp_path / "out").glob(".*.tmp"))
    rerun = subprocess.run(command(recipe), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert check_consistent(tmp_path / "out") is None


@pytest.mark.parametrize("seed", [0])
def test_random_sigkills_leave_a_consistent_folder(tmp_path, seed):
    recipe = prepare(tmp_path)
    started = time.monotonic()
    assert subprocess.run(command(recipe), capture_output=True).returncode == 0
    duration = time.monotonic() - started
    rng = random.Random(seed)
    for attempt in range(4):
        delay = rng.uniform(0.5, duration)
        problem = kill_and_rerun(recipe, delay, no_cache=attempt % 2 == 0)
        assert problem is None, problem


def test_lock_is_released_when_the_holder_dies(tmp_path):
    recipe = prepare(tmp_path, OTHER)
    process = start(recipe)
    wait_for_lock(tmp_path / "out", process)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    rerun = subprocess.run(command(recipe), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
