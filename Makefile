# The two commands a newcomer runs: `make demo` and `make test` (README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DATASET ?= fashion-mnist

.PHONY: demo test lint install deploy-extras tflite-env data browser bench bench-lowbit bench-olive olive-env fuzz clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The deploy targets that run here (openvino + nncf, MNN, ai-edge-litert: ~720 MB, and TFLite's
# converter venv below; README "Deploy"); `make test`
# tests them, `make demo` does not need them.
DEPLOY_STAMP := $(VENV)/.deploy-stamp
$(DEPLOY_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,deploy]'
	touch $@

# TFLite's converter, litert-torch (~6.6 GB with its own CUDA torch, ~3 min here), in a venv of its
# own beside .venv (it pins typing-extensions<4.13, modelzip's pydantic needs >=4.14), with the
# torch version of .venv (the float model crosses over as a torch.export program).
TFLITE_VENV  := $(VENV)-tflite
TFLITE_STAMP := $(TFLITE_VENV)/.installed-stamp
$(TFLITE_STAMP): $(STAMP)
	test -x $(TFLITE_VENV)/bin/python || $(PYTHON) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		"torch==$$($(BIN)/python -c 'from importlib.metadata import version; print(version("torch"))')" "litert-torch==0.10.0" "ai-edge-litert==2.3.0"
	touch $@

tflite-env: $(TFLITE_STAMP)

deploy-extras: $(DEPLOY_STAMP) $(TFLITE_STAMP)

data: install
	@bash scripts/ensure_data.sh $(DATASET)

# Headless Chromium for tests/test_browser.py (the HTML reports checked in a real browser).
browser:
	@bash scripts/ensure_browser.sh

checkpoints/fashion_cnn.pt: | install data
	$(BIN)/python scripts/train_baseline.py --model fashion_cnn --epochs 4 --out $@

demo: install data checkpoints/fashion_cnn.pt
	$(BIN)/modelzip run recipes/quickstart.yaml

test: install deploy-extras data browser lint
	MODELZIP_REQUIRE_BROWSER=1 MODELZIP_REQUIRE_DEPLOY=1 $(BIN)/python -m pytest -q

# Style (ruff) and the architecture's import layers (import-linter, contracts in pyproject.toml).
lint: install
	$(BIN)/ruff check modelzip tests scripts
	$(BIN)/lint-imports --no-cache

# Figures in BENCHMARKS.md and bench.json; `make bench BENCH_ARGS=--quick` for a short run.
# Part 2 (bench-unseen.json): default recipes on four architectures, and the fine-tuning sweep.
UNSEEN_ARGS ?= --sweep
bench: install data checkpoints/fashion_cnn.pt
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)
	$(BIN)/python scripts/bench_unseen.py $(UNSEEN_ARGS)
	$(BIN)/python scripts/bench_lowbit.py
	$(BIN)/python scripts/bench_olive.py $(OLIVE_ARGS)

# Sub-8-bit weights (issue 15): fp32, int8 and int4/ternary/binary QAT from checkpoints/fashion_cnn.pt,
# one seed (three 3-epoch trainings on CPU); bench-lowbit.json and the low-bit table in BENCHMARKS.md.
bench-lowbit: install data checkpoints/fashion_cnn.pt
	$(BIN)/python scripts/bench_lowbit.py $(LOWBIT_ARGS)

# Part 3 (bench-olive.json), issue #18: a quantize-only modelzip run against Olive's
# OnnxStaticQuantization on the same fp32 ONNX and calibration images. Olive lives in its own
# venv (.bench/olive-venv, ~1.4 GB, never modelzip's, never CI): `make olive-env` creates it;
# without it `make bench` skips this part and says so.
OLIVE_ARGS ?=
olive-env:
	PYTHON=$(PYTHON) bash scripts/olive_env.sh

bench-olive: install data checkpoints/fashion_cnn.pt olive-env
	$(BIN)/python scripts/bench_olive.py $(OLIVE_ARGS)

# 3,000 mutated recipes through `modelzip validate`: prints accepted/rejected/crashed/hung
# and fails on any crash or hang (tests/test_fuzz.py runs 1,000 of them in CI).
fuzz: install
	$(BIN)/python -m modelzip.testing.fuzz --count 3000 --seed 1

clean:
	rm -rf runs .pytest_cache
