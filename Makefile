# The README's commands. Each creates .venv when it is missing and installs decnn into it.
PYTHON ?= python3
VENV   ?= .venv
EDGE_VENV ?= .venv-edge
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-all demo screenshot lint clean edge

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# A device's environment without torch: decnn itself (no dependencies) and its `edge` extra.
edge: $(EDGE_VENV)/.installed

$(EDGE_VENV)/.installed: setup.cfg pyproject.toml
	test -x $(EDGE_VENV)/bin/python || $(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(EDGE_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(EDGE_VENV)/bin/python -m pip install --quiet $$($(EDGE_VENV)/bin/python -m decnn.edge.requirements)
	touch $@

# The fast tests in parallel, a test file per worker (its fixtures built once); TEST_WORKERS=0 runs them in one process
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

test-all: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m decnn.demo

# TensorBoard's HPARAMS tab over runs/ (after `make demo`), as headless Chromium renders it (apt-get install chromium)
screenshot: $(STAMP)
	$(PY) tests/hparams_ui.py runs paper/hparams_tab.png

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(EDGE_VENV) runs results checkpoints
