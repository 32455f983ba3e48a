"""Defaults that depend on the CPU, and the reasons the report gives for them.

onnxruntime's quantization guide: on x86-64 with AVX2/AVX-512 but without VNNI, the U8S8
int8 kernels multiply with VPMADDUBSW, whose 16-bit intermediate sums can saturate; the
guide suggests `reduce_range` (7-bit weights) there, and says VNNI machines (and ARM) have no
such issue. ORT runs QDQ models with int8 activations as U8S8 on x86 as well (it shifts them
to uint8), so the rule applies to both activation choices.
"""
from __future__ import annotations

from typing import Any


def reduce_range(explicit: bool | None, flags: list[str] | None = None) -> tuple[bool, str]:
    """(reduce_range, why) for this machine, unless the recipe set it."""
    from modelzip.envinfo import VNNI_FLAGS, cpu_flags

    if explicit is not None:
        return explicit, "set in the recipe"
    flags = cpu_flags() if flags is None else flags
    vnni = [flag for flag in VNNI_FLAGS if flag in flags]
    if vnni:
        return False, (f"CPU has VNNI ({', '.join(vnni)}): int8 dot products do not saturate, "
                       "so weights keep all 8 bits")
    if "avx2" in flags or "avx512f" in flags:
        return True, ("x86-64 CPU with AVX2/AVX-512 but no VNNI: onnxruntime's U8S8 kernels can "
                      "saturate, so weights use 7 bits (onnxruntime's documented remedy)")
    return False, "no AVX2/AVX-512 int8 saturation on this CPU (e.g. ARM), so weights keep all 8 bits"


def activations_reason(given: bool) -> str:
    """Why the activations are what they are; ``given``: the recipe set them."""
    if given:
        return "set in the recipe"
    return ("uint8 with a zero point uses all 256 levels for non-negative (ReLU) activations, "
            "and x86 int8 kernels run uint8 activations x int8 weights (U8S8) natively")


def cpu_summary() -> dict[str, Any]:
    """The CPU the defaults were chosen for: an artifact for another CPU may want other ones."""
    from modelzip.envinfo import VNNI_FLAGS, cpu_flags, cpu_model

    flags = cpu_flags()
    return {"model": cpu_model(), "flags": flags, "vnni": any(f in flags for f in VNNI_FLAGS),
            "note": "defaults fit this CPU; set reduce_range explicitly when deploying elsewhere"}
