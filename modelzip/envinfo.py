"""What machine and software a report's numbers were measured on.

Latency and int8 speed-ups depend on the CPU (VNNI/AMX make int8 fast; without
them int8 can be slower than fp32) and on library versions, so every report
carries this block. Versions come from package metadata: no torch import.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path

# The instruction-set extensions that decide how fast fp32 and int8 kernels run.
RELEVANT_CPU_FLAGS = (
    "avx",
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512bw",
    "avx_vnni",
    "amx_int8",
    "fma",
    "sse4_2",
    "neon",
)
# CPUs with any of these have int8 dot-product instructions ORT's int8 kernels use.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_PACKAGES = ("modelzip", "torch", "torchvision", "onnx", "onnxruntime")
_CPUINFO = Path("/proc/cpuinfo")
_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")
# NVIDIA's driver, AMD's ROCm driver (torch.cuda covers both), WSL's GPU bridge.
_GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def environment(threads: int, memo=None) -> dict:
    """A JSON-ready description of this machine; ``threads`` is what latency used.
    ``memo`` (the step cache) remembers onnxruntime's providers per installed version."""
    flags = cpu_flags()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{name: package_version(name) for name in _PACKAGES},
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": flags,
        "vnni": any(flag in flags for flag in VNNI_FLAGS),
        "threads": threads,
        "ort_providers": ort_providers(memo),
    }


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cpu_model() -> str:
    """The CPU's marketing name, e.g. 'AMD EPYC 9R14'; platform's guess elsewhere."""
    for key, value in _cpuinfo_fields():
        if key == "model name":
            return value
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """The RELEVANT_CPU_FLAGS this CPU reports, in that order."""
    present: set[str] = set()
    for key, value in _cpuinfo_fields():
        # x86 lists "flags"; arm64 lists "Features", where NEON is called "asimd".
        if key in ("flags", "Features"):
            present.update(value.split())
    if "asimd" in present or platform.machine().lower() in ("arm64", "aarch64"):
        present.add("neon")  # NEON is mandatory on arm64 (macOS has no /proc/cpuinfo)
    return [flag for flag in RELEVANT_CPU_FLAGS if flag in present]


# `round_to: auto`: the channel multiple onnxruntime's CPU convolutions run fast. Its MLAS
# library converts a Conv to the blocked NCHWc layout only when the input and output channel
# counts are multiples of the block (onnxruntime core/optimizer/nchwc_transformer.cc); other
# widths fall back to the generic im2col + GEMM path. The block is 16 channels with AVX-512F
# and 8 on other x86-64 CPUs (MLAS platform.cpp, NchwcBlockSize). Default ARM builds have no
# NCHWc kernels (MLAS_USE_ARM_NEON_NCHWC is a build option): there 8 keeps the GEMM's
# 4-float NEON vectors full (not measured). scripts/probe_widths.py measures it.
AUTO_ROUND_TO = "auto"
ARM_MACHINES = ("arm64", "aarch64")


def channel_multiple(flags: list[str], machine: str | None = None) -> tuple[int, str]:
    """(the channel multiple for onnxruntime on a CPU with ``flags``, the reason in words)."""
    machine = (machine or platform.machine()).lower()
    if "avx512f" in flags:
        return 16, "onnxruntime NCHWc convolutions work on blocks of 16 channels (AVX-512F)"
    if machine in ARM_MACHINES or "neon" in flags:
        return 8, "onnxruntime on ARM: no NCHWc blocking; multiples of 8 keep NEON vectors full"
    isa = "AVX2" if "avx2" in flags else "AVX" if "avx" in flags else "SSE"
    return 8, f"onnxruntime NCHWc convolutions work on blocks of 8 channels ({isa})"


def auto_round_to(value: int | str | None) -> tuple[int | None, dict | None]:
    """A ``round_to`` parameter resolved on this machine: (channel multiple or None for no
    rounding, {value, auto, reason} for the step details, None when given explicitly)."""
    if value != AUTO_ROUND_TO:
        return (None if value in (None, 1) else int(value)), None
    multiple, reason = channel_multiple(cpu_flags())
    return multiple, {"value": multiple, "auto": True, "reason": reason}


def auto_record(auto: dict, used: int | None) -> dict:
    """round_to auto's record in the step details, saying so when a narrow model needed finer rounding."""
    if used == auto["value"]:
        return auto
    return {**auto, "value": used,
            "reason": f"{auto['reason']}; the target was out of reach in multiples of {auto['value']} "
                      f"(too few channels), so {used or 'no rounding'} was used"}


def _cpuinfo_fields() -> list[tuple[str, str]]:
    """(key, value) lines of /proc/cpuinfo for the first CPU; empty where absent."""
    try:
        text = _CPUINFO.read_text(errors="replace")
    except OSError:
        return []
    fields = []
    for line in text.split("\n\n", 1)[0].splitlines():
        key, separator, value = line.partition(":")
        if separator:
            fields.append((key.strip(), value.strip()))
    return fields


def ort_providers(memo=None) -> list[str]:
    """onnxruntime's execution providers. Importing onnxruntime to ask takes a third of a
    second, so ``memo`` keeps the answer per installed onnxruntime distribution and version
    (a GPU build is another distribution: onnxruntime-gpu)."""
    import json

    installed = [f"{name}=={package_version(name)}" for name in _ORT_DISTRIBUTIONS
                 if package_version(name) != "unknown"]
    token = "ort_providers|" + ",".join(installed)
    recalled = memo.recall(token) if memo is not None and installed else None
    if recalled is not None:
        return json.loads(recalled)
    try:
        import onnxruntime
    except ImportError:
        return []
    providers = list(onnxruntime.get_available_providers())
    if memo is not None and installed:
        memo.remember(token, json.dumps(providers))
    return providers


def cuda_possible() -> bool:
    """Whether a CUDA (or ROCm) device could be present: its driver's device files exist.
    Without them torch.cuda.is_available() is False, and asking costs the import of torch."""
    return any(Path(p).exists() for p in _GPU_DRIVER_FILES)


if __name__ == "__main__":  # handy when filing a latency bug: python -m modelzip.envinfo
    import json

    json.dump(environment(threads=os.cpu_count() or 1), sys.stdout, indent=2)
    print()
