"""The olive section of BENCHMARKS.md from the figures scripts/bench_olive.py collected (formatting only)."""
from __future__ import annotations

import json


def _no_counterpart(phases: list[dict], wall_s: float) -> str:
    """The profiled work Olive's run has no counterpart for."""
    s = {ph["function"]: ph["s"] for ph in phases}
    torch_s, export_s = s.get("evaluation/accuracy.py:torch_accuracy", 0), s.get("passes/export.py:export_checked", 0)
    return (f"Olive starts from the ONNX: modelzip's torch accuracy ({torch_s:.1f} s) and export ({export_s:.1f} s) "
            f"have no counterpart there, {100 * (torch_s + export_s) / wall_s:.0f}% of the run; **modelzip onnx** "
            "starts from the same file and does neither.")


def _versions(results: dict) -> str:
    olive, env = results.get("olive_versions"), results.get("environment", {})
    if not olive:
        return ""
    return (f" Olive's venv: onnxruntime {olive['onnxruntime']}, onnx {olive['onnx']}, torch {olive['torch']}; "
            f"modelzip's: onnxruntime {env.get('onnxruntime')}, onnx {env.get('onnx')}, torch {env.get('torch')}. "
            f"Machine: {env.get('cpu_model')}, {env.get('cpu_count')} cores ({', '.join(env.get('cpu_flags', []))}), "
            f"shared with other jobs: compare within a round, not across runs.")


def _code(text: str) -> str:
    return text if text == "-" else f"`{text}`"


def _speed(comparison: dict) -> str:
    c = comparison
    return f"{c['speedup']:.2f}x ({c['ci'][0]:.2f}-{c['ci'][1]:.2f}, {c['verdict']})"


def like_for_like(row: dict) -> str:
    """The modelzip run that starts where Olive's does: from the fp32 ONNX (older figures: "modelzip")."""
    return "modelzip onnx" if "modelzip onnx" in row["wall"] else "modelzip"


def done_when(row: dict) -> dict:
    """Issue #18: modelzip's run at most as long as Olive's on the same input, its int8 model at least as fast."""
    tool, wall = like_for_like(row), row["wall"]
    direct = row["measured"]["comparisons"][f"{tool} vs olive"]
    return {"tool": tool, "wall": wall[tool]["median_s"] <= wall["olive"]["median_s"],
            "speed": all(direct[f"batch_{b}"]["verdict"] != "SLOWER" for b in (1, 256))}


def _olive_defaults(results: dict) -> str:
    """What Olive's defaults came to (from its footprint), where they differ from the matched run."""
    rows = list(results["models"].values())
    used, matched = rows[0]["own"]["olive default"]["pass_config"], results["olive_matched_settings"]
    # None: Olive decides (weight_symmetric None is symmetric for int8 weights, as matched).
    return ", ".join(f"{key} {used[key]}" for key in matched
                     if used.get(key) is not None and used[key] != matched[key]) or "the same"


def markdown(results: dict) -> str:
    latency = results["olive_latency"]
    install = results.get("olive_install") or {}
    out = ["<!-- olive:begin (scripts/bench_olive.py writes this section) -->",
           "## Olive comparison: quantize-only (issue #18)", "",
           "Reproduce: `make olive-env` (once: olive-ai "
           f"{results.get('olive_versions', {}).get('olive-ai', '0.13.0')} and its pins in `.bench/olive-venv`, "
           f"{install.get('bytes', 0) / 1e9:.2f} GB, installed in {install.get('seconds', 0):.0f} s), then "
           f"`make bench-olive` (`python scripts/bench_olive.py`; {results['wall_s'] / 60:.0f} min). "
           "Raw figures: bench-olive.json." + _versions(results), "",
           "Olive is given the fp32 ONNX that modelzip exports for recipes/bench/fp32.yaml. modelzip runs "
           "twice: **modelzip** starts from the checkpoint and exports that same ONNX itself (the sizes are "
           "checked equal); **modelzip onnx** starts from the very file Olive is given "
           "(`--set model.source=onnx:<file>`), the like-for-like run. All "
           f"calibrate on the same {results['calibration']['samples']} seeded training images (modelzip's "
           "stream, saved as .npy for Olive). modelzip: `modelzip run recipes/bench/quantize_static.yaml "
           "--no-cache --set passes.0.quantize.max_accuracy_drop=null` (export (not from the ONNX), ONNX "
           "baseline accuracy (torch's is skipped under the default `evaluation.steps: final`), calibration, "
           "the final optimize step, final accuracy and latency; the pass's own accuracy budget, a validation "
           "check Olive's pass has no counterpart for, is off, the recipe's gate stays). Olive: `olive run` with "
           "`OnnxStaticQuantization`, once with modelzip's settings (**olive**: "
           f"`{json.dumps(results['olive_matched_settings'])}`) and once with its defaults (**olive default**: "
           f"{_olive_defaults(results)}), each with an evaluator doing the same evaluation: "
           "accuracy on the 10,000 test images for input and output model, latency at batch 1 "
           f"({latency['1']['runs']} runs) and 256 ({latency['256']['runs']} runs). Wall time: whole processes, "
           f"tools taking turns ({results['rounds']} rounds, the first tool rotating each round). Then every artifact "
           "measured together in one process: accuracy in onnxruntime on the full test set, latency "
           "interleaved (the ms columns); each speed-up (fp32 median / int8 median, 95% interval, verdict) comes "
           "from that pair timed head to head, as a run times its baseline against its final model.", ""]
    for model, row in results["models"].items():
        wall, measured = row["wall"], row["measured"]
        out += [f"### {model} (`{row['source']}`)", "",
                "| tool | wall s per round | median (min-max) |", "|---|---|---|"]
        for tool in row["runs"]:
            w = wall[tool]
            out.append(f"| {tool} | {', '.join(f'{s:.1f}' for s in w['runs_s'])} | "
                       f"{w['median_s']:.1f} ({w['min_s']:.1f}-{w['max_s']:.1f}) |")
        out.append("")
        for tool in ("modelzip", "modelzip onnx"):
            ratio = wall.get(f"{tool.replace(' ', '_')}_over_olive")
            if ratio:
                out.append(f"{tool} / olive wall time per round: {', '.join(f'{p:.2f}' for p in ratio['per_round'])} "
                           f"(median {ratio['median']:.2f}).")
        out += ["",
                "| artifact | accuracy | bytes (x smaller) | batch 1 ms | speedup @1 | batch 256 ms | speedup @256 |",
                "|---|---|---|---|---|---|---|"]
        base = measured["artifacts"]["fp32"]
        for name, a in measured["artifacts"].items():
            comp = measured["comparisons"].get(f"{name} vs fp32")
            out.append(f"| {name} | {100 * a['accuracy']:.2f}% | {a['size_bytes']:,} "
                       f"({base['size_bytes'] / a['size_bytes']:.2f}x) | {a['batch_1']['median_ms']:.3f} | "
                       f"{_speed(comp['batch_1']) if comp else '-'} | {a['batch_256']['median_ms']:.2f} | "
                       f"{_speed(comp['batch_256']) if comp else '-'} |")
        out.append("")
        for tool in ("modelzip", "modelzip onnx"):
            direct = measured["comparisons"].get(f"{tool} vs olive")
            if direct:
                out.append(f"{tool} int8 vs olive int8 (olive median / {tool} median): batch 1 "
                           f"{_speed(direct['batch_1'])}, batch 256 {_speed(direct['batch_256'])}.")
        if not row["fp32"]["same_as_modelzip_baseline"]:
            out.append("**modelzip's baseline ONNX differs in size from the fp32 ONNX Olive was given.**")
        if row["settings_mismatch"]:
            out.append(f"**Settings differ**: {'; '.join(row['settings_mismatch'])}.")
        if "profile" in row:
            p = row["profile"]
            out += ["", f"Where a quantize-only modelzip run spends its time (cProfile, one run, "
                    f"{p['wall_s']:.1f} s wall; rows nest, the last overlaps the others):", "",
                    "| phase | function | calls | s | share of wall |", "|---|---|---|---|---|"]
            phases = p["phases"]
            if phases and phases[0]["function"] == "pipeline.py:run_recipe":
                phases = [{"phase": "start-up: interpreter, imports, CLI (wall minus pipeline)", "function": "-",
                           "calls": 1, "s": p["wall_s"] - phases[0]["s"]}, *phases]
            out += [f"| {ph['phase']} | {_code(ph['function'])} | {ph['calls']} | {ph['s']:.1f} | "
                    f"{100 * ph['s'] / p['wall_s']:.0f}% |" for ph in phases]
            out += ["", _no_counterpart(phases, p["wall_s"])]
        out.append("")
    out += ["### Done when (issue #18)", "",
            "| model | modelzip wall <= olive wall (medians, same input) | modelzip int8 at least as fast as "
            "olive int8 (1 and 256) |",
            "|---|---|---|"]
    for model, row in results["models"].items():
        met = done_when(row)
        w = row["wall"]
        out.append(f"| {model} | {met['tool']} {w[met['tool']]['median_s']:.1f} s vs {w['olive']['median_s']:.1f} s: "
                   f"{'yes' if met['wall'] else '**no**'} | {'yes' if met['speed'] else '**no**'} |")
    out.append("<!-- olive:end -->")
    return "\n".join(out) + "\n"


