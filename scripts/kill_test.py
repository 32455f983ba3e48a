"""SIGKILL `modelzip run` at random points, rerun it, and check the output folder each time.

    python scripts/kill_test.py --kills 20 --seed 0

A run is killed after a random delay (uniform between 0.5 s and the length of a
full run), the folder is checked (report.json absent, or the model and resolved
recipe match its digests and report.md matches it), the recipe is rerun to the
end, and the folder is checked again. Every other kill hits a `--no-cache` run,
so kills land in training and in cache writes, not only in measuring. Prints a
line per kill and exits 1 if any check failed.
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_run_folder import command, kill_and_rerun, prepare


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        recipe = prepare(Path(scratch))
        started = time.monotonic()
        subprocess.run(command(recipe), check=True, capture_output=True)
        duration = time.monotonic() - started
        print(f"a full run takes {duration:.1f} s; killing at random points in [0.5, {duration:.1f}] s")
        rng = random.Random(args.seed)
        failures = 0
        for attempt in range(args.kills):
            delay = rng.uniform(0.5, duration)
            problem = kill_and_rerun(recipe, delay, no_cache=attempt % 2 == 0)
            failures += problem is not None
            print(f"kill {attempt + 1:2d} at {delay:5.2f} s ({'--no-cache' if attempt % 2 == 0 else 'cached'}): "
                  f"{problem or 'consistent, rerun completed'}")
    print(f"{args.kills - failures} of {args.kills} kills: rerun completed and the folder was consistent")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
