# The front door: every target installs what it needs first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/mof-cli
STAMP  := $(VENV)/.install-stamp

# Demo and reproduction knobs (override on the command line: make demo DEMO_DIR=/tmp/d).
DEMO_DIR  ?= demo
DATASET   ?= synthetic
MODEL     ?= frozen-tiny
# The demo's MOF run fine-tunes frozen-tiny pre-trained on the synthetic corpus (shipped in
# DEMO_INIT; docs/laboratory.md), as the paper fine-tunes a pre-trained Frozen, at the
# laboratory's fine-tuning lr. --frame-lr 0.1: two frame steps per video at the paper's 8e-4
# would move the frames by well under one grey level. One torch thread: the shard reader works
# on the other core.
DEMO_INIT    ?= mof/models/pretrained/frozen-tiny-synthetic
DEMO_TRAIN   ?= --frames 8:4 --epochs 2 --eval-every 2 --batch-size 16 --lr 2e-4 --frame-lr 0.1 --augment none --init-from $(DEMO_INIT)
DEMO_THREADS ?= 1
# The demo's search: this test video's first caption is the query; the output says where it ranks.
DEMO_SEARCH_ID ?= synth01000
SEEDS     ?= 3

.PHONY: help install browser test test-slow test-gpu test-dali lint demo bench reproduce-table4 clean

help:  ## list targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-18s %s\n", $$1, $$2}'

install: $(STAMP)  ## build .venv with the pinned stack and mof installed in editable mode

$(STAMP): requirements.txt requirements-dev.txt setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

browser:  ## Debian's chromium for the web page test (apt-get only when it is missing)
	@command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium)

test: $(STAMP) browser  ## the test suite (CPU, no network; slow and gpu markers excluded)
	$(PY) -m pytest -q

test-slow: $(STAMP)  ## the slow suite: full-size weights, torchrun, the Table IV micro grid
	$(PY) -m pytest -q -m "slow and not gpu"

test-gpu: $(STAMP)  ## GPU tests (needs CUDA; DALI from `pip install .[gpu]`)
	$(PY) -m pytest -q -m gpu

# DALI's CPU decoder (VP8, VP9, MJPEG) runs the dali backend's own pipeline without a GPU.
test-dali: $(STAMP)  ## the dali backend on DALI's CPU decoder (installs DALI, about 0.5 GB)
	$(PY) -m pip install -q nvidia-dali-cuda130==2.4.0
	$(PY) -m pytest -q -m dali tests/test_decode_dali_cpu.py

lint: $(STAMP)  ## ruff (rules in pyproject.toml)
	$(VENV)/bin/ruff check .

demo: $(STAMP)  ## the main job end to end on the embedded synthetic dataset
	$(CLI) synth --out $(DEMO_DIR)/data
	$(CLI) shard --dataset synthetic --root $(DEMO_DIR)/data --split train --out $(DEMO_DIR)/shards/train --size 64 --frames 16
	$(CLI) shard --dataset synthetic --root $(DEMO_DIR)/data --split test --out $(DEMO_DIR)/shards/test --size 64 --frames 16
	$(CLI) inspect $(DEMO_DIR)/shards/train --sheet $(DEMO_DIR)/contact_sheet.png
	@if [ -f $(DEMO_DIR)/runs/mof/config.yaml ]; then \
	  echo "continuing $(DEMO_DIR)/runs/mof"; \
	  OMP_NUM_THREADS=$(DEMO_THREADS) $(CLI) train --resume $(DEMO_DIR)/runs/mof; \
	else \
	  OMP_NUM_THREADS=$(DEMO_THREADS) $(CLI) train --model $(MODEL) --train $(DEMO_DIR)/shards/train \
	    --test $(DEMO_DIR)/shards/test --out $(DEMO_DIR)/runs/mof $(DEMO_TRAIN); \
	fi
	$(CLI) eval --checkpoint $(DEMO_DIR)/runs/mof --shards $(DEMO_DIR)/shards/test
	$(CLI) export-frames --run $(DEMO_DIR)/runs/mof --num 4 --out $(DEMO_DIR)/frames --mp4 --attention
	$(CLI) index --checkpoint $(DEMO_DIR)/runs/mof --shards $(DEMO_DIR)/shards/test --out $(DEMO_DIR)/index --quiet
	$(CLI) search $(DEMO_DIR)/index --expect $(DEMO_SEARCH_ID) --top 5

SEARCH_QUICK := --sizes 10000,100000

# torchcodec (the decoder bench_shard.py compares ours with) loads the system's FFmpeg libraries.
bench: $(STAMP)  ## every benchmark, each printing its table (BENCH_ARGS=--quick for short runs)
	$(PY) -m pip install -q torchcodec==0.17.0
	@$(PY) -c "import torchcodec.decoders" 2>/dev/null || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ffmpeg; } || \
	  echo "no FFmpeg libraries for torchcodec: bench_shard.py leaves it out"
	$(PY) benchmarks/bench_shard.py $(BENCH_ARGS)
	$(PY) benchmarks/bench_models.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_store_fullsize.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_search.py $(if $(BENCH_ARGS),$(SEARCH_QUICK))

# Table IV knobs: GRID (cells, e.g. 1,4,8:4), EPOCHS, JOBS, ROOT (dataset root, required unless
# DATASET=synthetic), TABLE4_ARGS (any other `mof-cli reproduce table4` option).
GRID        ?=
EPOCHS      ?=
JOBS        ?=
ROOT        ?=
TABLE4_ARGS ?=

reproduce-table4: $(STAMP)  ## Table IV grid -> results/table4.{md,csv,png} (DATASET, MODEL, SEEDS, GRID, EPOCHS, ROOT)
	$(CLI) reproduce table4 --dataset $(DATASET) --model $(MODEL) --seeds $(SEEDS) \
	  $(if $(GRID),--grid $(GRID)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(JOBS),--jobs $(JOBS)) \
	  $(if $(ROOT),--root $(ROOT)) $(TABLE4_ARGS)

clean:  ## remove generated outputs (not the venv)
	rm -rf $(DEMO_DIR) results/table4.* runs shards
