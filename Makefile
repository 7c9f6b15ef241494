# The README's commands. Each creates .venv when it is missing and installs decnn into it.
PYTHON ?= python3
VENV   ?= .venv
EDGE_VENV ?= .venv-edge
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-all demo screenshot lint clean edge arm-check

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# A device's environment without torch: decnn and its `edge` extra (numpy, onnxruntime, mpi4py, mpich).
edge: $(EDGE_VENV)/.installed

$(EDGE_VENV)/.installed: setup.cfg pyproject.toml
	test -x $(EDGE_VENV)/bin/python || $(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(EDGE_VENV)/bin/python -m pip install --quiet -e '.[edge]'
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

# An arm64 board's userland (Debian under qemu-user; root, ~2 GB, minutes): decnn[edge] installed as decnn deploy
# installs a board, decnn edge --verify --check-exchange on 1 and 2 devices, logits equal to x86's within 1e-4
arm-check: $(STAMP)
	$(PY) tests/arm_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(EDGE_VENV) runs results checkpoints
