# The two commands of the README: `make run` and `make test`. Each sets up .venv on its own.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
VENV := .venv
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.synced
export UV_PYTHON := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
# DVC's queue workers start `dvc` and the stages start `python` from PATH: the project's first.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test lint ui bench clean-outputs setup

setup: $(STAMP)

# uv itself comes from PyPI into the venv; the locked set is then installed by it.
$(UV):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --inexact --compile-bytecode --python $(VENV)/bin/python
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/dvc repro
	$(VENV)/bin/convscope info

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

ui: $(STAMP)
	$(VENV)/bin/convscope ui

bench: $(STAMP)
	$(VENV)/bin/python bench/scratch_lines.py
	$(VENV)/bin/python bench/engine_vs_keras.py
	$(VENV)/bin/python bench/keras_mnist.py
	$(VENV)/bin/python bench/visuals.py
