# multimae-forge: `make demo` and `make test` work on a fresh machine (they create .venv and install).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export PYTHONDONTWRITEBYTECODE := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install demo test test-fast lint format bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/mmforge build-dataset examples/images out/demo --recipe manifests/demo.toml --overwrite
	$(BIN)/mmforge verify out/demo --deep
	rm -rf out/demo-run
	$(BIN)/mmforge pretrain --data out/demo --config trainer/configs/smoke.toml --out out/demo-run --device cpu --steps 20

lint: install
	$(BIN)/ruff check pipeline labelers trainer tests benchmarks
	$(BIN)/ruff format --check pipeline labelers trainer tests benchmarks
	$(BIN)/mypy
	$(BIN)/hadolint docker/Dockerfile

test: lint
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

format: install
	$(BIN)/ruff format pipeline labelers trainer tests benchmarks
	$(BIN)/ruff check --fix pipeline labelers trainer tests benchmarks

bench: install
	$(PY) -m benchmarks.bench_build

clean:
	rm -rf out $(VENV)
