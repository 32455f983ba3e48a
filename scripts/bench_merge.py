"""BENCHMARKS.md's "Merging single-task models" section, from a merge run's report.json.

Train the teachers and run the example (the commands are in recipes/examples/merge.yaml), then:

    python scripts/bench_merge.py                 # reads runs/merge/report.json
    python scripts/bench_merge.py --report other/report.json --out /tmp/B.md

Writes the section between the ``merge`` markers of BENCHMARKS.md (scripts/bench_report.py keeps
sections it does not own) and prints it. No measuring here: every figure is the report's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_report import write_section

SECTION = "merge"
ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=ROOT / "runs" / "merge" / "report.json")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    return parser.parse_args(argv)


def merge_step(report: dict) -> dict:
    return next(step for step in report["steps"] if step["pass"] == "merge")


def _pp(drop: float) -> str:
    """Student minus teacher in percentage points, signed (never -0.00)."""
    return f"{-100 * drop + 0.0:+.2f}"


def markdown(report: dict) -> str:
    step = merge_step(report)
    merge, details = step["details"]["merge"], step["details"]
    student, teachers, ratio = merge["student"], merge["teachers_total"], merge["ratio_to_teachers"]
    env = report["environment"]
    final = report["final"].get("task_accuracy") or {}
    lines = [f"<!-- {SECTION}:begin (scripts/bench_merge.py writes this section) -->",
             "## Merging single-task models into one (issue #16)", "",
             "Two `fashion_cnn` teachers (36x36 inputs), each trained on one task of `multi-fashion`, merged "
             "into one `multitask_cnn` student (a shared backbone of one teacher's size, one linear head per "
             "task) by per-head distillation, trained from scratch (`recipes/examples/merge.yaml`: "
             f"{details['epochs_run']} epochs, alpha {merge['alpha']:g}, T {merge['temperature']:g}, on "
             "the teachers' training canvases). Teachers and run:", "",
             "    python scripts/train_baseline.py --model fashion_cnn --dataset multi-fashion --task left "
             "--limit-train 20000 --val-samples 2000 --epochs 3 --out checkpoints/left_cnn.pt",
             "    python scripts/train_baseline.py --model fashion_cnn --dataset multi-fashion --task right "
             "--limit-train 20000 --val-samples 2000 --epochs 3 --out checkpoints/right_cnn.pt",
             "    modelzip run recipes/examples/merge.yaml && python scripts/bench_merge.py", "",
             f"{env.get('cpu_model', 'CPU')}, {env.get('cpu_count')} cores, onnxruntime {env.get('onnxruntime')} "
             f"with {env.get('threads')} threads, torch {env.get('torch')}; merge step {step['wall_time_s']:.0f} s "
             "on a machine shared with other jobs.", "",
             "| | student | teachers (sum) | student / teachers |", "|---|---|---|---|",
             f"| parameters | {student['params']:,} | {teachers['params']:,} | {ratio['params']:.1%} |",
             f"| MACs per sample | {student['macs'] / 1e6:.2f} M | {teachers['macs'] / 1e6:.2f} M "
             f"| {ratio['macs']:.1%} |",
             f"| fp32 ONNX | {student['onnx_bytes'] / 1e6:.2f} MB | {teachers['onnx_bytes'] / 1e6:.2f} MB "
             f"| {ratio['onnx_bytes']:.1%} |"]
    for t in merge["latency"] or []:
        lines.append(f"| latency, batch {t['batch']} ({t['threads']} threads) | {t['student_ms']:.3f} ms "
                     f"| {t['teachers_ms']:.3f} ms | {t['speedup']:.2f}x faster "
                     f"(95% CI {t['ci95'][0]:.2f}-{t['ci95'][1]:.2f}, {t['verdict']}) |")
    lines += ["", f"Top-1 on the {report['final']['eval_samples']:,} evaluation canvases:", "",
              "| task | teacher | student (torch) | student - teacher | final model.onnx |", "|---|---|---|---|---|"]
    for task, a in merge["accuracy"].items():
        onnx = f"{final[task]:.2%}" if task in final else "n/a"
        lines.append(f"| {task} | {a['teacher']:.2%} | {a['student']:.2%} | {_pp(a['drop'])} pp | {onnx} |")
    gates = [g for g in report["gates"] if g["name"].startswith("max_drop_vs_teacher")]
    latency_ok = all(t["verdict"] == "faster" for t in merge["latency"] or [])
    accuracy_ok = all(a["drop"] <= 0.01 for a in merge["accuracy"].values())
    met = "yes" if ratio["params"] <= 0.6 and latency_ok and accuracy_ok else "no"
    speed = ", ".join(f"{t['speedup']:.2f}x at batch {t['batch']}" for t in merge["latency"] or [])
    drops = ", ".join(f"{task} {_pp(a['drop'])} pp" for task, a in merge["accuracy"].items())
    checked = ", ".join(f"{g['name']} {'passed' if g['passed'] else 'FAILED'} (got {g['got']:.4f})" for g in gates)
    lines += ["", "| done when (issue #16) | measured | met |", "|---|---|---|",
              "| two single-task CNNs merged into one student: at most 60% of the teachers' summed parameters, "
              f"faster than running both, each task within 1 pp of its teacher | {ratio['params']:.1%} of the "
              f"parameters; {speed}; {drops} | {met} |",
              "", "Gates: " + (checked or "none"),
              f"<!-- {SECTION}:end -->", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    text = markdown(json.loads(args.report.read_text()))
    write_section(args.out, SECTION, text)
    print(text)


if __name__ == "__main__":
    main()
