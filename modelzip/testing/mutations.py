"""Mutated recipes for the fuzzer (modelzip/testing/fuzz.py), the same ones for the same seed.

Half the cases mutate the parsed data of a valid recipe and dump it again (keys deleted,
misspelled or added, values replaced by edge values, passes reordered or repeated); then
0-3 text or byte mutations follow (raw YAML edge values, duplicated or dropped lines, deep
nesting, anchors and aliases, alias bombs, recursive aliases, complex keys, huge values,
bytes that are not UTF-8, control characters, bit flips, truncation); and some cases add
`--set` overrides with odd keys and values.
"""
from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Case:
    index: int
    mutations: tuple[str, ...]  # what was done to the seed recipe, for the report
    data: bytes  # the recipe file
    overrides: tuple[str, ...] = ()


def seed_recipes() -> list[str]:
    """The shipped recipes (when run from a checkout) and synthetic ones like the tests'."""
    texts = [p.read_text() for p in sorted((REPO / "recipes").rglob("*.yaml"))]
    return texts + [_synthetic(passes) for passes in _SYNTHETIC_PASSES]


_SYNTHETIC_PASSES = (
    "  - export: {}",
    "  - prune: {method: magnitude, sparsity: 0.5}\n  - finetune: {epochs: 1, distill: {teacher: baseline}}"
    "\n  - quantize: {mode: static, calibration_samples: 64}\n  - export: {opset: 18}",
    "  - prune: {method: channel, ratio: 0.3, round_to: 8}\n  - lowrank: {energy: 0.9}\n  - export",
    "  - quantize: {mode: qat, epochs: 1, batch_size: 32}",
)


def _synthetic(passes: str) -> str:
    # The shape of tests/conftest.synthetic_recipe (kept here: the package cannot import tests).
    return "\n".join([
        "version: 1", "name: tiny", "seed: 0", "model:", "  source: modelzip.zoo:tiny_cnn",
        "  args: {num_classes: 4}", "  input_shape: [1, 1, 28, 28]", "data:",
        "  dataset: modelzip.testing:synthetic_dataset", "  args: {train: 256, eval: 128}",
        "  batch_size: 64", "  val_samples: 32", "passes:", passes,
        "evaluation: {warmup: 1, repeats: 5}", "output: out", "gates: {max_accuracy_drop: 0.05}", ""])


EDGE_VALUES: tuple[Any, ...] = (
    float("inf"), float("-inf"), float("nan"), 1e30, -1e30, 1e18, -1, 0, 1, 0.5, -0.0, 2**31, 2**64, 10**30,
    None, True, False, [], {}, {"a": {"b": {"c": 1}}}, [[[]]], "", " ", "1e30", "x" * 300, "x" * 5000,
    "a/" + "b" * 300, "/" * 5000, "Ωmega", "[/]", "[bold red]x[/]", "\u202eevil", "💥", "..", "a\u0000b",
    "passes", ["export", "quantize"], {"export": {}}, [{"quantize": {}}, {"quantize": {}}],
)

# Raw YAML for a scalar's place: things a dumper would never write.
EDGE_TEXTS = (
    ".inf", "-.inf", ".nan", ".NaN", "1e30", "1.0e+30", "-1", "0", "99999999999999999999999", "9" * 5000,
    "0x1F", "0o17", "1_000", "1:20:30", "yes", "~", "null", "[]", "{}", "{a: {b: 1}}", "'[/]'",
    '"\\ud800"', '"\\x1b[31mred"', "'" + "y" * 5000 + "'", "!!python/object:os.system", "!!binary AAAA",
    "!!binary ***", "!!set {a, b}", "!!omap [a: 1]", "!!int x", "!!float x", "2001-13-45", "2001-12-14",
    "2001-12-14t21:59:43.10-05:00", "*undefined", "&a", "? [1]", "[unclosed", "{a: 1", "'", "|\n  x",
    "!!timestamp 9999-99-99", "<<: *nowhere", "&a [1, *a]", "&m {k: *m}", "&g {<<: *g}", "- a\n- b",
)

ODD_SET_KEYS = (
    "passes.².x", "a..b", "", ".", "passes.", ".passes", "passes.-1.x", "passes.99999999999999999999.x",
    "passes." + "9" * 5000 + ".x", "x" * 5000, "name", "seed", "passes", "passes.0", "model.input_shape.0",
    "model.args.x.y.z", "gates.min_accuracy", "data.batch_size", "evaluation.threads", "output",
    "passes.0.export.parity_atol", "passes.0.quantize", "version", "base_dir", ".".join("k" * 60), "٣",
)
SET_VALUES = (
    "1", "-1", ".inf", ".nan", "1e30", "1.0e+30", "[1, 2]", "{a: 1}", "", "~", "[/]", "x" * 5000,
    "[" * 100 + "]" * 100, "&a [*a]", "*a", "[unclosed", "\x00", "a: b: c", "!!binary ***", "2001-13-45",
    "9" * 5000, "{export: {}}", "[{quantize: {}}, {quantize: {}}]",
)


def generate(count: int, seed: int) -> Iterator[Case]:
    """``count`` cases, the same ones for the same seed."""
    rng = random.Random(seed)
    texts = seed_recipes()
    for index in range(count):
        base = rng.choice(texts)
        mutations: list[str] = []
        data: bytes | str = base
        if rng.random() < 0.5:
            data = _structured(rng, base, mutations)
        for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
            name, mutate = rng.choice(_TEXT_MUTATIONS)
            mutations.append(name)
            data = mutate(rng, data)
        raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
        overrides = tuple(_override(rng, base) for _ in range(rng.choice((0, 0, 0, 1, 2))))
        yield Case(index, tuple(mutations) + tuple(f"--set {o[:30]!r}" for o in overrides), raw, overrides)


# ---- structured mutations: on the parsed data of a valid recipe, dumped again


def _structured(rng: random.Random, text: str, mutations: list[str]) -> str:
    data = yaml.safe_load(text)
    for _ in range(rng.choice((1, 1, 2, 3))):
        name, mutate = rng.choice(_DATA_MUTATIONS)
        mutations.append(name)
        mutate(rng, data)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=rng.random() < 0.5)


def _containers(data: Any) -> list[Any]:
    """Every dict and list in ``data``, each once (a container reached twice is not walked again)."""
    out, stack, seen = [], [data], set()
    while stack:
        node = stack.pop()
        if isinstance(node, (dict, list)) and id(node) not in seen:
            seen.add(id(node))
            out.append(node)
            stack.extend(node.values() if isinstance(node, dict) else node)
    return out


def _edge(rng: random.Random) -> Any:
    """One of EDGE_VALUES, copied: a shared list or dict put in two places (or into itself by a
    later mutation) made a recipe that contains itself, and the walk above never ended."""
    return copy.deepcopy(rng.choice(EDGE_VALUES))


def _slot(rng: random.Random, data: Any) -> tuple[Any, Any] | None:
    """A random (container, key or index) whose value can be replaced."""
    slots = [(c, k) for c in _containers(data) for k in (list(c) if isinstance(c, dict) else range(len(c)))]
    return rng.choice(slots) if slots else None


def _typo(rng: random.Random, word: str) -> str:
    if not word:
        return "x"
    i = rng.randrange(len(word))
    kind = rng.randrange(4)
    if kind == 0:
        return word[:i] + word[i + 1:]
    if kind == 1:
        return word[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz_") + word[i:]
    if kind == 2 and len(word) > 1:
        j = min(i + 1, len(word) - 1)
        return word[:i] + word[j] + word[i] + word[j + 1:]
    return word.upper()


def _delete_key(rng, data) -> None:
    maps = [c for c in _containers(data) if isinstance(c, dict) and c]
    if maps:
        target = rng.choice(maps)
        del target[rng.choice(list(target))]


def _rename_key(rng, data) -> None:
    maps = [c for c in _containers(data) if isinstance(c, dict) and c]
    if maps:
        target = rng.choice(maps)
        key = rng.choice(list(target))
        target[_typo(rng, str(key))] = target.pop(key)


def _edge_value(rng, data) -> None:
    slot = _slot(rng, data)
    if slot:
        container, key = slot
        container[key] = _edge(rng)


def _add_key(rng, data) -> None:
    maps = [c for c in _containers(data) if isinstance(c, dict)]
    if maps:
        rng.choice(maps)[rng.choice(("extra", "lr", "epochs", "seed", "passes", "1", "ünï"))] = _edge(rng)


def _edit_passes(rng, data) -> None:
    passes = data.get("passes") if isinstance(data, dict) else None
    if not isinstance(passes, list) or not passes:
        return
    kind = rng.randrange(5)
    if kind == 0:  # quantize twice, or a pass after export
        passes.append(rng.choice([{"quantize": {}}, {"quantize": {"mode": "dynamic"}}, {"finetune": {}},
                                  "export", {"lowrank": {"energy": 0.9}}]))
    elif kind == 1:
        rng.shuffle(passes)
    elif kind == 2:
        passes.insert(rng.randrange(len(passes) + 1), copy.deepcopy(rng.choice(passes)))
    elif kind == 3:
        data["passes"] = rng.choice([{"export": {}}, "export", 3, [[]], [{}], [{"a": 1, "b": 2}]])
    else:
        entry = rng.choice(passes)
        if isinstance(entry, dict) and entry:
            name = next(iter(entry))
            entry[_typo(rng, name)] = entry.pop(name)


_DATA_MUTATIONS: list[tuple[str, Callable[[random.Random, Any], None]]] = [
    ("delete-key", _delete_key), ("rename-key", _rename_key), ("edge-value", _edge_value),
    ("edge-value", _edge_value), ("add-key", _add_key), ("edit-passes", _edit_passes),
]


# ---- text and byte mutations


def _as_text(data: str | bytes) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", "surrogateescape")


def _as_bytes(data: str | bytes) -> bytes:
    return data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")


def _value_lines(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if re.match(r"^\s*(- )?[\w.-]+: \S", line)] or [0]


def _replace_value(lines: list[str], i: int, raw: str) -> None:
    head = re.match(r"^(\s*(?:- )?[\w.-]+:) ", lines[i])
    lines[i] = f"{head.group(1)} {raw}" if head else raw


def _raw_value(rng, data):
    lines = _as_text(data).split("\n")
    _replace_value(lines, rng.choice(_value_lines(lines)), rng.choice(EDGE_TEXTS))
    return "\n".join(lines)


def _dup_line(rng, data):
    lines = _as_text(data).split("\n")
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    return "\n".join(lines)


def _drop_line(rng, data):
    lines = _as_text(data).split("\n")
    del lines[rng.randrange(len(lines))]
    return "\n".join(lines)


def _indent(rng, data):
    lines = _as_text(data).split("\n")
    i = rng.randrange(len(lines))
    lines[i] = rng.choice((" ", "\t", "      ", "")) + lines[i].lstrip(" " if rng.random() < 0.5 else "")
    return "\n".join(lines)


def _deep(rng, data):
    lines = _as_text(data).split("\n")
    depth = rng.choice((5, 45, 49, 50, 51, 60, 200, 3000))
    flow = rng.random() < 0.7
    nested = ("[" * depth + "]" * depth) if flow else ("{a: " * depth + "1" + "}" * depth)
    if rng.random() < 0.3:  # block style: one more indent per level
        nested = "\n" + "\n".join("  " * (k + 2) + "k:" for k in range(depth)) + " 1"
    _replace_value(lines, rng.choice(_value_lines(lines)), nested)
    return "\n".join(lines)


def _anchor_alias(rng, data):
    lines = _as_text(data).split("\n")
    candidates = _value_lines(lines)
    a, b = rng.choice(candidates), rng.choice(candidates)
    head = re.match(r"^(\s*(?:- )?[\w.-]+:) (.*)$", lines[a])
    if head:
        lines[a] = f"{head.group(1)} &A {head.group(2)}"
        _replace_value(lines, b, "*A")
    return "\n".join(lines)


def _bomb(rng, data):
    levels, fan = rng.choice(((9, 9), (6, 10), (4, 5), (3, 3), (12, 2), (20, 2), (30, 3)))
    rows = ["lol0: &l0 [" + ", ".join(['"lol"'] * fan) + "]"]
    rows += [f"lol{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * fan) + "]" for k in range(1, levels)]
    where = rng.random()
    if where < 0.5:  # top level: unknown keys, but the aliases are still read
        return _as_text(data).rstrip("\n") + "\n" + "\n".join(rows) + "\n"
    # inside model.args, a dict[str, Any] that pydantic passes through unchecked
    inner = "\n".join("    " + row for row in rows)
    return re.sub(r"(?m)^model:\s*$", "model:\n  args:\n" + inner.replace("\\", "\\\\"), _as_text(data), count=1)


def _recursive_alias(rng, data):
    lines = _as_text(data).split("\n")
    _replace_value(lines, rng.choice(_value_lines(lines)),
                   rng.choice(("&r [1, *r]", "&r {k: *r}", "&r {<<: *r}", "&r [[[*r]]]")))
    return "\n".join(lines)


def _complex_key(rng, data):
    lines = _as_text(data).split("\n")
    row = rng.choice(("? [a, b]\n: 1", "? {a: 1}\n: 2", "[1, 2]: x", "{a: 1}: y", "? - x\n: z",
                      "? &k [1]\n: 1\nz: *k"))
    lines.insert(rng.randrange(len(lines) + 1), row)
    return "\n".join(lines)


def _huge(rng, data):
    lines = _as_text(data).split("\n")
    size = rng.choice((300, 5000, 100_000))
    if rng.random() < 0.5:
        _replace_value(lines, rng.choice(_value_lines(lines)), "x" * size)
    else:
        lines.insert(rng.randrange(len(lines) + 1), "k" * size + ": 1")
    return "\n".join(lines)


def _many_nodes(rng, data):
    n = rng.choice((1000, 50_000, 150_000))
    return _as_text(data) + "\nlots: [" + ",".join("0" * n) + "]\n"


def _oversize(rng, data):
    return _as_text(data) + "\n# " + "x" * (1 << 20) + "\n"


def _bad_bytes(rng, data):
    raw = _as_bytes(data)
    i = rng.randrange(len(raw) + 1)
    junk = rng.choice((b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80", b"\xf4\x90\x80\x80"))
    return raw[:i] + junk + raw[i:]


def _other_encoding(rng, data):
    return _as_text(data).encode(rng.choice(("utf-16", "latin-1", "utf-32")), "replace")


def _control(rng, data):
    text = _as_text(data)
    i = rng.randrange(len(text) + 1)
    junk = rng.choice(("\x00", "\x1b[31m", "\x07", "\x7f", "\ufeff", "\r", "\x85", "\u2028"))
    return text[:i] + junk + text[i:]


def _flip(rng, data):
    raw = bytearray(_as_bytes(data))
    for _ in range(rng.choice((1, 2, 5))):
        if raw:
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    return bytes(raw)


def _truncate(rng, data):
    raw = _as_bytes(data)
    return raw[: rng.randrange(len(raw) + 1)]


def _line_endings(rng, data):
    return rng.choice(("\ufeff", "")) + _as_text(data).replace("\n", rng.choice(("\r\n", "\r")))


_TEXT_MUTATIONS: list[tuple[str, Callable[[random.Random, Any], str | bytes]]] = [
    ("raw-value", _raw_value), ("raw-value", _raw_value), ("raw-value", _raw_value),
    ("dup-line", _dup_line), ("drop-line", _drop_line), ("indent", _indent), ("deep", _deep),
    ("anchor-alias", _anchor_alias), ("alias-bomb", _bomb), ("recursive-alias", _recursive_alias),
    ("complex-key", _complex_key), ("huge", _huge), ("bad-utf8", _bad_bytes), ("encoding", _other_encoding),
    ("control-char", _control), ("flip", _flip), ("truncate", _truncate), ("line-endings", _line_endings),
    ("many-nodes", _many_nodes), ("oversize", _oversize),
]


def _override(rng: random.Random, base: str) -> str:
    if rng.random() < 0.5:
        key = rng.choice(ODD_SET_KEYS)
    else:
        key = ".".join(str(p) for p in rng.choice(_paths(yaml.safe_load(base))))
    value = rng.choice(SET_VALUES) if rng.random() < 0.7 else str(rng.choice(EDGE_VALUES))
    return rng.choice((f"{key}={value}", f"{key}{value}", f"{key}=={value}"))


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        out += _paths(value, prefix + (key,))
    return out or [("seed",)]
