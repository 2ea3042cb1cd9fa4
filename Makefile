# make test  — create .venv, install everything, run the test suite
# make demo  — create .venv, install everything, build a dataset from the bundled demo web, train CLIP on it
# make experiment — balanced vs raw (uniform sample, equal size) and the bootstrap filter on the demo web: 3 seeds each, a report with intervals
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-out

# Spark on one machine: bind to loopback, run executors with the venv's interpreter,
# and keep Spark's console to warnings (witbuild/spark_conf/log4j2.properties).
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))
export SPARK_CONF_DIR := $(abspath witbuild/spark_conf)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install test test-fast demo experiment lint clean

$(VENV)/.installed: pyproject.toml
	# headless Chromium renders pages, images and the stats report in tests; Debian's grey and CMYK ICC profiles
	# are the real profiles of tests/test_colour_profile_grey_cmyk.py (each skipped when it cannot be installed)
	{ command -v chromium && [ -f /usr/share/color/icc/Gray.icc ] && \
		[ -f /usr/share/color/icc/ghostscript/default_cmyk.icc ]; } >/dev/null || \
		{ command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq --no-install-recommends chromium icc-profiles-free libgs-common >/dev/null; } || true
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# lazy loaders' scripts from npm, run in headless Chromium by tests/test_browser_reference.py (skipped without them)
	command -v npm >/dev/null && mkdir -p $(VENV)/js && cd $(VENV)/js && \
		xargs npm pack --silent < $(abspath tests/data/lazy_loaders/packages.txt) >/dev/null || true
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel on disk; a looser spec would pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[curate,download,train,stats,dev]' torch==2.13.0
	# references the tests run as published and do not install (open_clip's package imports torchvision):
	# open_clip's tokenizer, clip_benchmark's metrics (tests/helpers/reference_wheels.py)
	$(PY) -m pip download -q --no-deps -d $(VENV)/reference open-clip-torch==3.3.0 clip-benchmark==1.6.1
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q --durations=15

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .

demo: install
	rm -rf $(DEMO_OUT)
	$(VENV)/bin/witbuild demo --out $(DEMO_OUT)
	$(VENV)/bin/witbuild stats $(DEMO_OUT)/build --html $(DEMO_OUT)/report.html
	# train the tiny CLIP on the shards with 2 DDP processes, then evaluate it on the held-out digits
	OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --standalone --nproc_per_node=2 trainer/train.py \
		--data $(DEMO_OUT)/build --config tiny-cpu --output $(DEMO_OUT)/train \
		--set eval.zeroshot_dir=$(DEMO_OUT)/eval/digits

EXPERIMENT_OUT ?= experiment-out
experiment: install
	OMP_NUM_THREADS=1 $(VENV)/bin/witbuild experiment configs/experiment-demo.yaml --set output=$(EXPERIMENT_OUT)

clean:
	rm -rf $(DEMO_OUT) $(EXPERIMENT_OUT) .pytest_cache
