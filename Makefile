# ecomtune: `make demo` and `make test` work on a fresh machine; everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch and torchvision pinned to the releases that pip finds on this kind of machine's disk;
# transformers 5's Qwen2-VL processor needs torchvision.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-latest lint docs docs-reference clean

install: $(STAMP)

# constraints.txt is the tested set of versions; `make test-latest` tries the newest releases in a venv of its own.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt $(TORCH_PINS)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,eval,multigpu,docs]"  # eval: lmms-eval, multigpu: deepspeed, docs: mkdocs, so their tests run too
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ecomtune demo --output runs/demo --overwrite  # make demo replaces the last demo

# The suite builds the docs too (tests/test_docs.py: mkdocs build --strict, the generated pages up to date).
test: $(STAMP)
	$(PY) -m ruff check ecomtune tests
	$(PY) -m pytest -q -x --durations=15

# The suite against the newest releases pyproject.toml allows (no constraints.txt), in .venv-latest.
LATEST := .venv-latest
test-latest:
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q --upgrade $(TORCH_PINS)
	$(LATEST)/bin/python -m pip install -q --upgrade -e ".[dev,eval,multigpu,docs]"
	$(LATEST)/bin/python -m pip freeze --exclude-editable | sort -f | diff constraints.txt - || true  # what moved
	$(LATEST)/bin/python -m ruff check ecomtune tests
	$(LATEST)/bin/python -m pytest -q -x --durations=15

# The documentation site, into site/; --strict: a broken link or anchor fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The reference pages generated from the code (CLI, recipe keys, backbones), written into docs/reference/.
docs-reference: $(STAMP)
	$(PY) docs/gen_reference.py

lint: $(STAMP)
	$(PY) -m ruff check ecomtune tests

clean:
	rm -rf runs site .pytest_cache .venv-latest
