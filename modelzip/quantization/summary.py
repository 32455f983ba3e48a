"""What the `quantize` pass records for the report, and its one-line summary."""
from __future__ import annotations

from typing import Any

from modelzip.evaluation.latency import FASTER, SLOWER, latency_verdict
from modelzip.quantization.settings import QuantizeSettings

_LAYER_KEYS = ("layers_quantized", "layers_float", "float_nodes")  # reported under "layers" instead


def float_is_faster(latency: dict[str, Any] | None, batch_size: int) -> bool:
    """True when the quantized model was measured SLOWER than float at the data batch size."""
    if not latency:
        return False
    pair = latency.get(f"batch_{batch_size}")
    return pair is not None and _verdict(pair) == SLOWER


def _verdict(pair: dict[str, Any]) -> str:
    """The report's verdict on int8 vs float (speedup = float / int8), by the same rule.

    With the pair's 95% interval when it has one; a pair of medians only is judged
    on its point speedup, so a difference inside the equivalence margin is noise here too.
    """
    speedup = pair["float_ms"] / pair["quantized_ms"]
    return latency_verdict(pair.get("ci_low", speedup), pair.get("ci_high", speedup))


def record(*, chosen: QuantizeSettings, quantizer, preprocess: str, nodes: dict[str, Any], layers,
           labels: dict[str, str],
           excluded: dict[str, str], search, latency, agreement: dict[str, Any], float_bytes: int,
           quantized_bytes: int, returned_float: bool, batch_size: int) -> dict[str, Any]:
    """The step's report details (JSON-ready). ``labels``: node -> module (or node) name."""
    kept_float = _float_layers(layers, nodes, excluded, search, chosen.mode)
    float_nodes = set(nodes["float_nodes"])
    details: dict[str, Any] = {
        "mode": chosen.mode,
        "settings": quantizer.settings,
        "preprocess": preprocess,
        "returned": "float (prefer: faster)" if returned_float else "quantized",
        "layers": {"total": len(layers), "quantized": nodes["layers_quantized"], "kept_float": kept_float},
        "nodes": {k: v for k, v in nodes.items() if k not in _LAYER_KEYS},
        "exclude": {pattern: sorted({labels.get(n, n) for n, p in excluded.items() if p == pattern})
                    for pattern in chosen.exclude},
        # e.g. a MaxPool between two int8 layers: Q/DQ surround it anyway, so ORT runs it in int8.
        "excluded_but_quantized": sorted({labels.get(n, n) for n in excluded if n not in float_nodes}),
        "agreement_with_float": agreement,
        "size": {"float_bytes": float_bytes, "quantized_bytes": quantized_bytes,
                 "ratio": round(float_bytes / max(quantized_bytes, 1), 3)},
        "latency": latency,
    }
    if search is not None:
        details["accuracy"] = search.to_json() | {"kept_float": [labels[n] for n in search.best.float_layers],
                                                  "split": "validation"}
        if search.sensitivity:
            details["sensitivity"] = [row | {"layer": labels[row["layer"]]} for row in search.sensitivity]
    details["summary"] = _summary(chosen, quantizer.label, details, search, returned_float, batch_size)
    return details


def _float_layers(layers, nodes, excluded, search, mode: str) -> list[dict[str, str]]:
    """Each layer left in float, with the reason."""
    by_search = set(search.best.float_layers) if search is not None else set()
    float_nodes = set(nodes["float_nodes"])
    rows = []
    for layer in layers:
        if layer.node not in float_nodes:
            continue
        if layer.node in excluded:
            reason = f"exclude: {excluded[layer.node]!r}"
        elif layer.node in by_search:
            reason = "accuracy: kept float by the sensitivity search"
        else:
            reason = f"not quantized by mode {mode} ({layer.op_type})"
        rows.append({"layer": layer.label, "node": layer.node, "op_type": layer.op_type, "reason": reason})
    return rows


def _summary(chosen, label: str, details: dict[str, Any], search, returned_float: bool,
             batch_size: int) -> str:
    parts = []
    latency = details["latency"] or {}
    slower = [pair for pair in latency.values() if _verdict(pair) == SLOWER]
    for pair in slower:
        parts.append(f"{label} SLOWER than fp32 at batch {pair['batch']} "
                     f"({_ms(pair['quantized_ms'])} vs {_ms(pair['float_ms'])})")
    if returned_float:
        parts.insert(0, f"kept FLOAT model (prefer: faster; {label} slower at batch {batch_size})")
    layers = details["layers"]
    size = details["size"]
    parts.append(f"{chosen.mode} {label}: {len(layers['quantized'])}/{layers['total']} layers quantized, "
                 f"{_mb(size['float_bytes'])} -> {_mb(size['quantized_bytes'])} "
                 f"({size['ratio']:.1f}x smaller)")
    faster = [pair for pair in latency.values() if _verdict(pair) == FASTER]
    if faster:
        parts.append("faster: " + ", ".join(
            f"batch {p['batch']} {_ms(p['float_ms'])} -> {_ms(p['quantized_ms'])}" for p in faster))
    same = [pair for pair in latency.values() if pair not in slower and pair not in faster]
    if same:
        parts.append("latency within noise: " + ", ".join(
            f"batch {p['batch']} {_ms(p['float_ms'])} -> {_ms(p['quantized_ms'])}" for p in same))
    if search is not None:
        accuracy = details["accuracy"]
        points = 100 * accuracy["drop"]
        if accuracy["met"]:
            kept = len(accuracy["kept_float"])
            parts.append(f"validation drop {points:.2f} pt <= {100 * accuracy['budget']:.2f}"
                         + (f" with {kept} layer(s) float" if kept else ""))
        else:
            parts.append(f"MISSED accuracy budget by {100 * accuracy['missed_by']:.2f} pt "
                         f"({len(accuracy['kept_float'])} layer(s) float)")
    return "; ".join(parts)


def _ms(value: float) -> str:
    return f"{value:.3g} ms"


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"
