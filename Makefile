# Two commands do all the set-up on a fresh machine (both idempotent):
#   make demo   -> installs into .venv, builds Mixer-B/16, shows its logits equal timm's, prints a speed table
#   make test   -> installs into .venv (with test extras), runs ruff and the test suite
# PYTHON may point at an existing interpreter that already has torch (e.g. a GPU machine): make test PYTHON=python3
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
# torch/torchvision pair that pip resolves from this project's package mirror; any torch>=2.4 works on a GPU machine.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install install-test demo test bench lint

$(VENV)/bin/python:
	python3 -m venv $(VENV)

install: $(if $(filter $(VENV)/bin/python,$(PYTHON)),$(VENV)/bin/python)
	$(PYTHON) -c "import torch, torchvision" 2>/dev/null || $(PYTHON) -m pip install -q $(TORCH_SPEC)
	$(PYTHON) -m pip install -q -e .

install-test: install
	$(PYTHON) -m pip install -q -e ".[test]"

demo: install
	$(PYTHON) -m fastmixer demo

test: install-test
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

bench: install-test
	$(PYTHON) -m pytest -q bench

lint: install-test
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .
