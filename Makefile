# multimae-forge: `make demo` and `make test` work on a fresh machine (they create .venv and install).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export PYTHONDONTWRITEBYTECODE := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)
# the demo: rendered scenes, labelled by the shipped teachers, and the pretraining steps on them (of 32: two CPU
# ranks of 16 under torchrun, one torch thread each, about 1.3 x the steps per second of one two-thread process;
# the scenes go into two shards, one per rank, whatever DEMO_SCENES is)
DEMO_SCENES ?= 1000
DEMO_STEPS ?= 700

.PHONY: install demo test test-fast lint format bench clean

# the demo needs the package alone; the tests and linters add the dev extras on top (a fresh `make demo` skips them)
$(VENV)/.installed-run: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed: $(VENV)/.installed-run
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed-run
	@test "$(DEMO_SCENES)" -ge 64 2>/dev/null || { echo "error: DEMO_SCENES must be a whole number >= 64 (two shards of at least one global batch), got '$(DEMO_SCENES)'"; exit 2; }
	@test "$(DEMO_STEPS)" -ge 1 2>/dev/null || { echo "error: DEMO_STEPS must be a whole number >= 1, got '$(DEMO_STEPS)'"; exit 2; }
	test -f out/demo/mmforge.json || rm -rf out/demo  # a demo folder of format 1 (before the marker) is not reused
	$(BIN)/mmforge scenes out/demo-scenes --n $(DEMO_SCENES) --seed 0 --size 96 --distance 1.0:1.8 --split train --quiet
	$(BIN)/mmforge build-dataset out/demo-scenes/train/rgb out/demo --recipe scenes-teacher --executor local --overwrite --quiet --set shards.size=$$(( ($(DEMO_SCENES) + 1) / 2 ))
	$(BIN)/mmforge verify out/demo --deep
	rm -rf out/demo-run
	OMP_NUM_THREADS=1 $(BIN)/torchrun --standalone --nproc-per-node 2 -m trainer.train --data out/demo --config scenes-demo --out out/demo-run --device cpu --steps $(DEMO_STEPS) --set data.batch_size=16 --set train.progress=true
	$(BIN)/mmforge preview out/demo --n 6 --out out/demo-preview.png --html out/demo-report
	$(BIN)/mmforge scenes out/demo-scenes --n 4 --seed 0 --size 96 --distance 1.0:1.8 --split heldout --quiet
	$(BIN)/mmforge reconstruct out/demo-run/checkpoint-last.pt --image out/demo-scenes/heldout/rgb/data/000003.png --labels-from out/demo --keep rgb=12 --keep depth=12 --keep semseg=12 --out out/demo-reconstruction.png

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
