"""One optimization: read the ONNX file, edit a copy, write it with its name map, check it.

The order matters: stripping and folding come first (they remove tensors), then bias scales are
replaced by their derivation (folding would compute them again), then dead nodes
and unused initializers go, identical initializers are shared, unused domains dropped, and
names are shortened last, so the map lists only tensors the file still holds.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelzip.onnx_optimize import NAME_MAP_FILE, NAME_MAP_SCHEMA, OptimizeFailure, OptimizeSettings
from modelzip.onnx_optimize.fold import Folded

OUTPUT_FILE = "model.onnx"


@dataclass(frozen=True)
class Sizes:
    """A file's bytes, split into tensor payload and graph overhead (everything else)."""

    file_bytes: int
    tensor_bytes: int

    @property
    def overhead_bytes(self) -> int:
        return self.file_bytes - self.tensor_bytes

    @property
    def overhead(self) -> float:
        return self.overhead_bytes / self.file_bytes if self.file_bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"file_bytes": self.file_bytes, "tensor_bytes": self.tensor_bytes,
                "overhead_bytes": self.overhead_bytes, "overhead": round(self.overhead, 4)}

    @classmethod
    def of(cls, path: Path) -> Sizes:
        from modelzip.evaluation.onnx_stats import tensor_data_bytes

        return cls(path.stat().st_size, tensor_data_bytes(path))


@dataclass(frozen=True)
class OptimizeResult:
    """What one optimization did (``to_json()`` is the step's report details)."""

    path: Path
    name_map: Path | None
    before: Sizes
    after: Sizes
    stripped: dict[str, int] | None
    folded: Folded | None
    removed: dict[str, int]  # dead nodes, unused initializers
    shared_initializers: int | None
    domains_removed: tuple[str, ...] | None
    names_shortened: dict[str, int] | None
    parity: dict[str, Any]
    bias_scales_derived: int | None = None

    @property
    def summary(self) -> str:
        saved = self.before.file_bytes - self.after.file_bytes
        parts = [f"{_size(self.before.file_bytes)} -> {_size(self.after.file_bytes)} "
                 f"(-{saved / max(self.before.file_bytes, 1):.1%}), graph overhead "
                 f"{self.before.overhead:.1%} -> {self.after.overhead:.1%}"]
        if self.names_shortened:
            parts.append(f"{sum(self.names_shortened.values())} names shortened")
        if self.domains_removed:
            parts.append(f"{len(self.domains_removed)} unused domains removed")
        if self.bias_scales_derived:
            parts.append(f"{self.bias_scales_derived} bias scales computed from their layers' scales")
        if self.folded and (self.folded.nodes or self.folded.constant_nodes):
            parts.append(f"{self.folded.nodes + self.folded.constant_nodes} constant nodes folded")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "before": self.before.to_json(), "after": self.after.to_json(),
            "saved_bytes": self.before.file_bytes - self.after.file_bytes,
            "stripped": self.stripped, "constants_folded": self.folded.to_json() if self.folded else None,
            "removed": self.removed, "shared_initializers": self.shared_initializers,
            "domains_removed": None if self.domains_removed is None else list(self.domains_removed),
            "names_shortened": self.names_shortened, "bias_scales_derived": self.bias_scales_derived,
            "name_map": self.name_map.name if self.name_map else None,
            "parity": self.parity, "summary": self.summary,
        }


def optimize_onnx(source: Path, out_dir: Path, settings: OptimizeSettings) -> OptimizeResult:
    """Write the optimized copy of ``source`` to ``out_dir``/model.onnx (and its name map to
    ``out_dir``/names.json when names were shortened, or ``source`` came with one)."""
    import onnx

    from modelzip.onnx_optimize import fold, graph, names, scales

    model = onnx.load(str(source))
    stripped = graph.strip(model) if settings.strip else None
    folded = fold.fold_constants(model) if settings.fold_constants else None
    # After folding, which would compute the products again.
    derived = scales.derive_bias_scales(model.graph) if settings.derive_bias_scales else None
    dead_nodes, unused = graph.remove_dead(model.graph)
    aliases = graph.dedupe_initializers(model.graph) if settings.dedupe_initializers else {}
    domains = tuple(graph.remove_unused_domains(model)) if settings.remove_unused_domains else None
    earlier = _earlier_map(source)
    shortened = names.shorten(model, aliases) if settings.shorten_names else None
    name_map = shortened.composed(earlier) if shortened else earlier

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / OUTPUT_FILE
    onnx.save(model, str(path))
    _check(path)
    map_path = None
    if name_map is not None:
        map_path = out_dir / NAME_MAP_FILE
        map_path.write_text(json.dumps(name_map.to_json(NAME_MAP_SCHEMA), indent=1))
    _carry_module_map(source.parent, out_dir, shortened.nodes if shortened else {})
    parity = check_parity(source, path, settings)
    counts = None if shortened is None else {"tensors": len(shortened.tensors) - len(aliases),
                                             "nodes": len(shortened.nodes)}
    return OptimizeResult(path, map_path, Sizes.of(source), Sizes.of(path), stripped, folded,
                          {"nodes": dead_nodes, "initializers": unused},
                          len(aliases) if settings.dedupe_initializers else None, domains, counts, parity,
                          derived)


def _earlier_map(source: Path):
    """The name map an earlier optimization left beside ``source``, if any."""
    from modelzip.onnx_optimize.names import NameMap

    path = source.parent / NAME_MAP_FILE
    if not path.is_file():
        return None
    try:
        return NameMap.from_json(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise OptimizeFailure(f"the name map beside the input model is unreadable: {exc}", got=str(path),
                              fix="run without the cache (--no-cache) to rebuild it") from exc


def _carry_module_map(source_dir: Path, out_dir: Path, nodes: dict[str, str]) -> None:
    """The exporter's node -> torch module map, under the new node names: a later `quantize`
    still finds layers (and `exclude:` patterns) by their torch module names."""
    from modelzip.onnx_export import MODULE_MAP_FILE

    path = source_dir / MODULE_MAP_FILE
    if not path.is_file() or source_dir.resolve() == out_dir.resolve():
        return
    modules = json.loads(path.read_text())
    if nodes:  # renamed: nodes the optimization removed drop out
        modules = {nodes[node]: module for node, module in modules.items() if node in nodes}
    (out_dir / MODULE_MAP_FILE).write_text(json.dumps(modules, indent=1))


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise OptimizeFailure(f"the optimized file fails onnx.checker: {str(exc).splitlines()[0]}",
                              fix="turn off the option that broke it (fold_constants, strip or "
                                  "shorten_names) and report the model") from exc


def check_parity(reference: Path, candidate: Path, settings: OptimizeSettings) -> dict[str, Any]:
    """Both models on one seeded random batch in onnxruntime: every output must agree within
    ``parity_rtol`` x its largest |value| (integer and boolean outputs exactly)."""
    import numpy as np

    from modelzip.evaluation.runtime import ort_session

    try:
        expected_session = ort_session(reference)
    except Exception as exc:  # ORT raises its own exception types
        raise OptimizeFailure(f"onnxruntime cannot run the input model: {exc}",
                              fix="optimize only models onnxruntime runs (set `optimize: false` in the recipe)"
                              ) from exc
    feeds = _random_feeds(expected_session.get_inputs(), settings.parity_samples, settings.seed)
    expected = expected_session.run(None, feeds)
    got = ort_session(candidate).run(None, feeds)
    worst, bound = 0.0, 0.0
    for output, want, have in zip(expected_session.get_outputs(), expected, got):
        want, have = np.asarray(want), np.asarray(have)
        exact = want.dtype.kind not in "fc"
        diff = float(np.max(np.abs(want.astype(np.float64) - have.astype(np.float64)), initial=0.0))
        limit = 0.0 if exact else settings.parity_rtol * float(np.max(np.abs(want), initial=0.0))
        if want.shape != have.shape or not diff <= limit:  # `not <=`: a NaN difference fails
            raise OptimizeFailure(
                f"the optimized model computes another {output.name!r} than its input",
                got=f"max |diff| {diff:.3g}" if want.shape == have.shape else f"shape {have.shape}",
                expected=f"<= {limit:.3g} ({settings.parity_rtol:g} x the largest |{output.name}|)",
                fix="turn off fold_constants (numpy and the runtime may round differently) and "
                    "report the model")
        worst, bound = max(worst, diff), max(bound, limit)
    return {"samples": settings.parity_samples, "inputs": "random normal, seeded", "max_abs_diff": worst,
            "rtol": settings.parity_rtol, "bound": bound}


_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
           "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def _random_feeds(inputs, samples: int, seed: int) -> dict[str, Any]:
    """Seeded inputs: standard normal floats, zeros elsewhere (valid indices); a symbolic first
    dimension is the batch (``samples``), other symbolic dimensions are 1."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = {}
    for value in inputs:
        shape = [d if isinstance(d, int) else (samples if i == 0 else 1) for i, d in enumerate(value.shape)]
        dtype = np.dtype(_DTYPES.get(value.type, "float32"))
        if dtype.kind == "f":
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = np.zeros(shape, dtype=dtype)
    return feeds


def _size(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"
