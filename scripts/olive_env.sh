#!/usr/bin/env bash
# Olive's own venv for the Olive comparison (scripts/bench_olive.py): `make olive-env`.
#
# .bench/olive-venv gets olive-ai[cpu] 0.13.0 and every package it needs, pinned in
# scripts/olive-requirements.txt (the set verified together). It is never modelzip's venv
# and nothing but the bench uses it; CI does not run this. Idempotent: a stamp holding the
# hash of the pins (and of this script) says the venv is up to date; change either and it
# is rebuilt from scratch. The install's time and size go to install.json beside the stamp.
#
# Two things Olive 0.13.0 needs that its metadata does not say:
#   * `requests`: olive/telemetry imports it, so without it even `olive --help` dies with
#     ModuleNotFoundError. It is in the pins.
#   * nothing else is patched. The "one-line patch to resource_path.py" once needed on
#     Python 3.11 works around find_all_resources() calling ResourceType(None) on an
#     evaluator config whose `type` is None: CaseInsensitiveEnum._missing_ does None.lower(),
#     an AttributeError its `except ValueError` does not catch. bench_olive.py names the
#     evaluator type ("OnnxEvaluator", what Olive picks for an ONNX model anyway), so the
#     lookup fails with the ValueError Olive expects and no file in the venv is changed.
#
# torch: Olive imports it, and pip's pick from PyPI is the CUDA build (torch 2.14.1 with
# triton and 14 nvidia-* wheels: 2.9 GB of wheels, checked with `pip install --dry-run
# --report`). The pins ask for torch==2.13.0+cpu, found through pip's find-links (/opt/wheels
# here) or, where reachable, the PyTorch CPU index; the whole venv is then about 1.4 GB.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OLIVE_VENV:-$REPO/.bench/olive-venv}"
PYTHON="${PYTHON:-python3}"
PINS="$REPO/scripts/olive-requirements.txt"
STAMP="$VENV/.olive-env-stamp"
CPU_INDEX="https://download.pytorch.org/whl/cpu"

want="$(cat "$PINS" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/olive" ]]; then
    echo "olive-env: $VENV is up to date (olive-ai $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("olive-ai"))'))"
    exit 0
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "olive-env: the pins were verified on Python 3.11; $PYTHON is $("$PYTHON" --version 2>&1)." >&2
    echo "           Run with PYTHON=python3.11 make olive-env" >&2
    exit 2
}

extra=()
if curl --silent --fail --max-time 5 --output /dev/null "$CPU_INDEX/torch/"; then
    extra=(--extra-index-url "$CPU_INDEX")
fi

started=$(date +%s.%N)
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${extra[@]}" -r "$PINS" 2> >(grep -v "is ignored: it is neither" >&2) || {
    echo "olive-env: pip could not install $PINS." >&2
    echo "           torch==2.13.0+cpu comes from pip's find-links or $CPU_INDEX; is either available?" >&2
    exit 1
}
"$VENV/bin/olive" --help > /dev/null  # the check that failed without `requests`
seconds=$(python3 -c "import time; print(round(time.time() - $started, 1))")
bytes=$(du -sb "$VENV" | cut -f1)
printf '{"seconds": %s, "bytes": %s, "torch_index": "%s"}\n' "$seconds" "$bytes" \
    "${extra[1]:-find-links}" > "$VENV/install.json"
echo "$want" > "$STAMP"
echo "olive-env: installed $VENV in ${seconds} s, $((bytes / 1000000)) MB"
