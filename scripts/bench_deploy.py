"""The deploy section of BENCHMARKS.md (issue #14) from a finished run of recipes/examples/deploy.yaml.

    modelzip run recipes/examples/deploy.yaml
    python scripts/bench_deploy.py --report runs/examples/deploy/report.json --write BENCHMARKS.md

Formatting only: every figure is report.json's (modelzip's report.md has the same table).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_report import write_section  # noqa: E402  (scripts/ is on sys.path when a script runs)

from modelzip.report import deploy_header, deploy_rows  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=REPO / "runs/examples/deploy/report.json")
    parser.add_argument("--write", type=Path, default=None, metavar="BENCHMARKS.md",
                        help="replace this script's section of the file (else print it)")
    return parser.parse_args(argv)


def section(report: dict) -> str:
    env = report["environment"]
    rows = deploy_rows(report)
    table = ["| " + " | ".join(deploy_header(report)) + " |", "|" + "---|" * len(rows[0])]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    notes = ["- " + "; ".join(filter(None, [
        f"{d['target']} {d['precision']}: converted from the {d['converted_from']} in {d['wall_time_s']:.1f} s",
        d["details"].get("converter"), d["note"] or f"measured in {d['runtime']}"])) for d in report["deploy"]]
    return "\n".join([
        "<!-- deploy:begin (scripts/bench_deploy.py writes this section) -->",
        "## Deploy targets (issue #14)", "",
        "`modelzip run recipes/examples/deploy.yaml` (prune 50% of channels, 3 epochs of distillation, static "
        "int8 for onnxruntime, then OpenVINO int8, MNN fp16, TensorRT int8 and TFLite int8), then "
        "`python scripts/bench_deploy.py --write BENCHMARKS.md`. Every row ran on the 10,000 Fashion-MNIST test "
        f"images; latency is the median ms against the final ONNX in onnxruntime timed interleaved in the same run "
        f"({report['final']['threads']} threads; > 1x: the target is faster). Accuracy of the input model "
        f"(fp32 ONNX): {100 * report['baseline']['onnx']['accuracy']:.2f}%.", "",
        *table, "", *notes, "",
        f"CPU {env.get('cpu_model')}, {env.get('cpu_count')} cores, shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f} when this section was written): latency moves with the load, so compare the "
        "two timings within one row (measured together), not rows with each other.", "",
        "<!-- deploy:end -->", ""])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    text = section(json.loads(args.report.read_text()))
    if args.write:
        write_section(args.write, "deploy", text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
