# ecomtune: `make demo` and `make test` work on a fresh machine; everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch and torchvision pinned to the releases that pip finds on this kind of machine's disk;
# transformers 5's Qwen2-VL processor needs torchvision.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[dev,eval,multigpu]"  # eval: lmms-eval, multigpu: deepspeed, so their end-to-end tests run too
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ecomtune demo --output runs/demo --overwrite  # make demo replaces the last demo

test: $(STAMP)
	$(PY) -m ruff check ecomtune tests
	$(PY) -m pytest -q -x --durations=15

lint: $(STAMP)
	$(PY) -m ruff check ecomtune tests

clean:
	rm -rf runs .pytest_cache
