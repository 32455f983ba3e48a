"""CI gates: compare the final artifact with the baseline; failures exit 1."""
from __future__ import annotations

from typing import Any

from modelzip.errors import GateResult
from modelzip.recipe import Gates


def check_gates(gates: Gates, baseline: dict[str, Any], final: dict[str, Any]) -> list[GateResult]:
    ratios = final["ratios"]
    results = []
    if gates.max_accuracy_drop is not None:
        drop = baseline["torch"]["accuracy"] - final["accuracy"]
        results.append(GateResult("max_accuracy_drop", drop <= gates.max_accuracy_drop + 1e-12, drop,
                                  f"<= {gates.max_accuracy_drop}"))
    if gates.min_accuracy is not None:
        results.append(GateResult("min_accuracy", final["accuracy"] >= gates.min_accuracy,
                                  final["accuracy"], f">= {gates.min_accuracy}"))
    if gates.min_size_ratio is not None:
        got = ratios["size"]
        results.append(GateResult("min_size_ratio", got >= gates.min_size_ratio, got,
                                  f">= {gates.min_size_ratio}"))
    if gates.min_speedup is not None:
        got = ratios.get("speedup")
        results.append(GateResult("min_speedup", got is not None and got >= gates.min_speedup, got,
                                  f">= {gates.min_speedup} (latency at data.batch_size)"))
    return results
