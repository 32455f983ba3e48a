"""`modelzip sweep` against the same points run one by one (issue 17's done-when).

The Fashion-MNIST CNN's channel-pruning recipe over target_macs 0.3..0.8 (6 points): once as one
`modelzip sweep` (one process, one shared step cache), once as 6 independent `modelzip run`s,
each with a cold cache of its own, as a shell loop would. Both start cold; the order alternates
over --rounds so that machine drift does not favour one side. Writes bench-sweep.json.

    python scripts/bench_sweep.py [--rounds 1] [--checkpoint checkpoints/fashion_cnn.pt]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "examples" / "prune_channel.yaml"
KEY = "passes.0.prune.target_macs"
VALUES = ("0.3", "0.4", "0.5", "0.6", "0.7", "0.8")


def _modelzip(*args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "modelzip", *args], capture_output=True, text=True)
    if done.returncode not in (0, 1):  # 1: a gate failed, the run is complete
        raise RuntimeError(f"modelzip {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def sweep(work: Path, sets: list[str]) -> float:
    shutil.rmtree(work, ignore_errors=True)
    return _modelzip("sweep", str(RECIPE), "--grid", f"{KEY}={','.join(VALUES)}", "--out", str(work), "--quiet",
                     *sets)


def independent(work: Path, sets: list[str]) -> float:
    shutil.rmtree(work, ignore_errors=True)
    return sum(_modelzip("run", str(RECIPE), "--set", f"{KEY}={value}", "--out", str(work / value), "--quiet", *sets)
               for value in VALUES)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "fashion_cnn.pt")
    parser.add_argument("--work", type=Path, default=REPO / ".bench" / "sweep")
    parser.add_argument("--json", type=Path, default=REPO / "bench-sweep.json")
    args = parser.parse_args(argv)
    sets = ["--set", f"model.checkpoint={args.checkpoint.resolve()}"]
    rows = []
    for round_ in range(args.rounds):
        order = (("sweep", sweep), ("independent", independent))
        for name, measure in order if round_ % 2 == 0 else reversed(order):
            seconds = measure(args.work / name, sets)
            rows.append({"round": round_, "how": name, "seconds": round(seconds, 1)})
            print(f"round {round_}: {name} {seconds:.1f} s", flush=True)
    total = {how: sum(r["seconds"] for r in rows if r["how"] == how) for how in ("sweep", "independent")}
    saving = 1 - total["sweep"] / total["independent"]
    fronts = json.loads((args.work / "sweep" / "sweep.json").read_text())["pareto"]
    result = {"recipe": str(RECIPE.relative_to(REPO)), "grid": {KEY: list(VALUES)}, "runs": rows,
              "saving": round(saving, 3), "pareto": fronts}
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"sweep {total['sweep']:.1f} s vs independent {total['independent']:.1f} s: {100 * saving:.0f}% less; "
          f"Pareto fronts {fronts}")


if __name__ == "__main__":
    main()
