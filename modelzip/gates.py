"""CI gates: compare the final record with the baseline; failures exit 1."""
from __future__ import annotations

from typing import TYPE_CHECKING

from modelzip.evaluation.records import Final, GateResult

if TYPE_CHECKING:
    from modelzip.recipe import Gates


def check_gates(gates: Gates, final: Final) -> list[GateResult]:
    """One result per gate the recipe sets, in a fixed order; reads the final record's ratios."""
    ratios = final.ratios
    accuracy = final.metrics.accuracy
    results = []
    if gates.max_accuracy_drop is not None:
        drop = ratios.accuracy_drop  # input model (torch) - final
        results.append(GateResult("max_accuracy_drop", drop <= gates.max_accuracy_drop + 1e-12, drop,
                                  f"<= {gates.max_accuracy_drop}"))
    if gates.min_accuracy is not None:
        results.append(GateResult("min_accuracy", accuracy >= gates.min_accuracy, accuracy,
                                  f">= {gates.min_accuracy}"))
    if gates.min_size_ratio is not None:
        results.append(GateResult("min_size_ratio", ratios.size >= gates.min_size_ratio, ratios.size,
                                  f">= {gates.min_size_ratio}"))
    if gates.min_speedup is not None:
        got = ratios.speedup  # None when latency was not measured: the gate fails, got "n/a"
        results.append(GateResult("min_speedup", got is not None and got >= gates.min_speedup, got,
                                  f">= {gates.min_speedup} (latency at data.batch_size)"))
    return results
