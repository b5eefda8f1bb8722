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
	test -f out/demo/mmforge.json || rm -rf out/demo  # a demo folder of format 1 (before the marker) is not reused
	$(BIN)/mmforge build-dataset examples/images out/demo --recipe manifests/demo.toml --overwrite
	$(BIN)/mmforge verify out/demo --deep
	rm -rf out/demo-run
	$(BIN)/mmforge pretrain --data out/demo --config trainer/configs/smoke.toml --out out/demo-run --device cpu --steps 20
	$(BIN)/mmforge preview out/demo --n 6 --out out/demo-preview.png --html out/demo-report
	$(BIN)/mmforge reconstruct out/demo-run/checkpoint-last.pt --sample out/demo:train-000000/00000000000 --out out/demo-reconstruction.png

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
