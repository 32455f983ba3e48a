"""What the `quantize` pass records for the report (QuantizeDetails), and its one-line summary."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from modelzip.evaluation.latency import FASTER, SLOWER
from modelzip.evaluation.records import LatencyPair, LatencyResult
from modelzip.quantization.settings import QuantizeSettings

_LAYER_KEYS = ("layers_quantized", "layers_float", "float_nodes")  # reported under "layers" instead


@dataclass(frozen=True)
class QuantizeDetails:
    """The quantize step's ``details`` in report.json; ``to_json()`` writes them (docs/report.md)."""

    mode: str
    settings: dict[str, Any]  # what the quantizer used, with the reasons for CPU-dependent defaults
    preprocess: str
    returned_float: bool  # prefer: faster and int8 SLOWER at data.batch_size: the float model is returned
    layers: dict[str, Any]  # total, quantized, kept_float (each with its reason)
    nodes: dict[str, Any]  # what runs quantized in the int8 graph (what_runs.summarize)
    exclude: dict[str, list[str]]  # pattern -> the layers it matched
    excluded_but_quantized: list[str]
    agreement_with_float: dict[str, Any]
    size: dict[str, Any]
    # Float (baseline) vs quantized (final), measured like the pipeline's final latency, when
    # prefer: faster chooses by it; else None.
    latency: LatencyResult | None
    summary: str = ""
    accuracy: dict[str, Any] | None = None  # the accuracy-aware search (max_accuracy_drop)
    sensitivity: list[dict[str, Any]] | None = None
    qat: dict[str, Any] | None = None  # mode qat: the training and which ranges were learned
    low_bit: dict[str, Any] | None = None  # sub-8-bit weights: per layer grid, format, bytes; file bytes

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode, "settings": self.settings, "preprocess": self.preprocess,
            "returned": "float (prefer: faster)" if self.returned_float else "quantized",
            "layers": self.layers, "nodes": self.nodes, "exclude": self.exclude,
            "excluded_but_quantized": self.excluded_but_quantized,
            "agreement_with_float": self.agreement_with_float, "size": self.size,
            # The pipeline's latency shape, less its "cached" flag (the step has its own).
            "latency": None if self.latency is None else self.latency.to_json(with_cached=False),
        }
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy
        if self.sensitivity:
            out["sensitivity"] = self.sensitivity
        out["summary"] = self.summary
        if self.qat is not None:
            out["qat"] = self.qat
        if self.low_bit is not None:
            out["low_bit"] = self.low_bit
        return out


def float_is_faster(latency: LatencyResult | None, batch_size: int) -> bool:
    """True when the quantized model was measured SLOWER than float at the data batch size:
    the whole 95% interval of the speedup below the equivalence margin (latency_verdict)."""
    pair = latency.at(batch_size) if latency is not None else None
    return pair is not None and pair.verdict == SLOWER


def record(*, chosen: QuantizeSettings, quantizer, preprocess: str, nodes: dict[str, Any], layers,
           labels: dict[str, str],
           excluded: dict[str, str], search, latency: LatencyResult | None, agreement: dict[str, Any],
           float_bytes: int, quantized_bytes: int, returned_float: bool, batch_size: int) -> QuantizeDetails:
    """The step's report details. ``labels``: node -> module (or node) name."""
    kept_float = _float_layers(layers, nodes, excluded, search, chosen.mode)
    float_nodes = set(nodes["float_nodes"])
    accuracy = sensitivity = None
    if search is not None:
        accuracy = search.to_json() | {"kept_float": [labels[n] for n in search.best.float_layers],
                                       "split": "validation"}
        sensitivity = [row | {"layer": labels[row["layer"]]} for row in search.sensitivity]
    details = QuantizeDetails(
        mode=chosen.mode, settings=quantizer.settings, preprocess=preprocess, returned_float=returned_float,
        layers={"total": len(layers), "quantized": nodes["layers_quantized"], "kept_float": kept_float},
        nodes={k: v for k, v in nodes.items() if k not in _LAYER_KEYS},
        exclude={pattern: sorted({labels.get(n, n) for n, p in excluded.items() if p == pattern})
                 for pattern in chosen.exclude},
        # e.g. a MaxPool between two int8 layers: Q/DQ surround it anyway, so ORT runs it in int8.
        excluded_but_quantized=sorted({labels.get(n, n) for n in excluded if n not in float_nodes}),
        agreement_with_float=agreement,
        size={"float_bytes": float_bytes, "quantized_bytes": quantized_bytes,
              "ratio": round(float_bytes / max(quantized_bytes, 1), 3)},
        latency=latency, accuracy=accuracy, sensitivity=sensitivity)
    placement = _placement_clause(quantizer.settings.get("placement"), labels)
    return dataclasses.replace(details, summary=_summary(chosen, quantizer.label, details, batch_size, placement))


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


def lowbit_summary(details: QuantizeDetails) -> QuantizeDetails:
    """details with the summary line, e.g. 'qat 3 epochs distilled; 2 ternary + 2 int8 layers,
    3.30 MB -> 0.24 MB (13.9x smaller; weights 0.23 MB, graph 3.1 kB); parity 100.00% on 1024 images'."""
    rows, file = details.low_bit["layers"], details.low_bit["file"]
    grids: dict[str, int] = {}
    for row in rows:
        grids[row["grid"]] = grids.get(row["grid"], 0) + 1
    training, size, parity = details.qat, details.size, details.agreement_with_float
    epochs = training["epochs_run"]
    parts = [f"qat {epochs} epoch{'s' if epochs != 1 else ''}" + (" distilled" if training["distilled"] else "")
             + (f" (val {training['best_val_accuracy']:.4f})" if training["best_val_accuracy"] is not None else ""),
             " + ".join(f"{n} {grid}" for grid, n in sorted(grids.items())) + " layers"
             + (f" with int8 {details.settings['activations']} inputs"
                if details.settings.get("activations", "float") != "float" else "") + ", "
             f"{_mb(size['float_bytes'])} -> {_mb(size['quantized_bytes'])} ({size['ratio']:.1f}x smaller; "
             f"weights {_mb(file['weight_bytes'])}, graph {_mb(file['graph_bytes'])})",
             f"parity {100 * parity['top1_agreement']:.2f}% on {parity['samples']} images"]
    pairs = details.latency.pairs if details.latency is not None else ()
    if pairs:
        parts.append("latency " + ", ".join(map(_float_to_quantized, pairs)))
    return dataclasses.replace(details, summary="; ".join(parts))


def _placement_clause(placement: dict[str, Any] | None, labels: dict[str, str]) -> str | None:
    """e.g. 'placement: features.0 input padded 1 -> 4 channels, classifier.1 input flattened channels last'."""
    placement = placement or {}
    changes = [f"{labels.get(row['node'], row['node'])} input padded {row['input_channels']} -> "
               f"{row['padded_to']} channels" for row in placement.get("padded_inputs", ())]
    changes += [f"{labels.get(row['layer'], row['layer'])} input flattened channels last"
                for row in placement.get("nhwc_flatten", ())]
    return "placement: " + ", ".join(changes) if changes else None


def _summary(chosen, label: str, details: QuantizeDetails, batch_size: int, placement: str | None) -> str:
    parts = []
    pairs = details.latency.pairs if details.latency is not None else ()
    slower = [pair for pair in pairs if pair.verdict == SLOWER]
    for pair in slower:
        parts.append(f"{label} SLOWER than fp32 at batch {pair.batch} "
                     f"({_ms(pair.final.median_ms)} vs {_ms(pair.baseline.median_ms)})")
    if details.returned_float:
        parts.insert(0, f"kept FLOAT model (prefer: faster; {label} slower at batch {batch_size})")
    layers = details.layers
    size = details.size
    parts.append(f"{chosen.mode} {label}: {len(layers['quantized'])}/{layers['total']} layers quantized, "
                 f"{_mb(size['float_bytes'])} -> {_mb(size['quantized_bytes'])} "
                 f"({size['ratio']:.1f}x smaller)")
    if placement:
        parts.append(placement)
    as_run = details.nodes.get("as_run")
    if as_run:
        parts.append(_as_run_clause(as_run))
    faster = [pair for pair in pairs if pair.verdict == FASTER]
    if faster:
        parts.append("faster: " + ", ".join(map(_float_to_quantized, faster)))
    same = [pair for pair in pairs if pair.verdict not in (SLOWER, FASTER)]  # within noise, same model
    if same:
        parts.append("latency within noise: " + ", ".join(map(_float_to_quantized, same)))
    accuracy = details.accuracy
    if accuracy is not None:
        points = 100 * accuracy["drop"]
        if accuracy["met"]:
            kept = len(accuracy["kept_float"])
            parts.append(f"validation drop {points:.2f} pt <= {100 * accuracy['budget']:.2f}"
                         + (f" with {kept} layer(s) float" if kept else ""))
        else:
            parts.append(f"MISSED accuracy budget by {100 * accuracy['missed_by']:.2f} pt "
                         f"({len(accuracy['kept_float'])} layer(s) float)")
    return "; ".join(parts)


def _as_run_clause(as_run: dict[str, dict[str, int]]) -> str:
    """e.g. 'onnxruntime runs int8: 2 QLinearConv, 2 QGemm; float: 1 ReduceMean; layout: 1 Transpose'."""
    def counts(ops: dict[str, int]) -> str:
        return ", ".join(f"{n} {op}" for op, n in sorted(ops.items(), key=lambda item: (-item[1], item[0])))
    clauses = [f"{group}: {counts(as_run[group])}" for group in ("int8", "float") if as_run.get(group)]
    layout = as_run.get("layout")
    if layout:
        clauses.append(f"layout: {counts(layout)}")
    return "onnxruntime runs " + ("; ".join(clauses) or "nothing")


def _float_to_quantized(pair: LatencyPair) -> str:
    return f"batch {pair.batch} {_ms(pair.baseline.median_ms)} -> {_ms(pair.final.median_ms)}"


def _ms(value: float) -> str:
    return f"{value:.3g} ms"


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"
