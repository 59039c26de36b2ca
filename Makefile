# The two commands of the README: `make run` and `make test`. Each sets up .venv on its own.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
VENV := .venv
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.synced
export UV_PYTHON := $(VENV)/bin/python
# DVC's queue workers start `dvc` and the stages start `python` from PATH: the project's first.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test test-unit lint ui server bench clean-outputs setup vendor-vega gallery dashboard

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

# Every tier (tests/unit, tests/integration, tests/e2e) on two workers (pytest-xdist); a test
# file runs whole on one worker, so its module fixtures are made once.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile

# The inner loop: in-process tests only (no subprocess, TensorFlow only where Keras is the subject).
test-unit: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

ui: $(STAMP)
	$(VENV)/bin/convscope ui

# Optuna's dashboard on the sweeps' studies: the local optuna.db beside mlflow.db, or a team's
# PostgreSQL in CONVSCOPE_OPTUNA_STORAGE (the sweeper's storage).
OPTUNA_STORAGE ?= $(or $(CONVSCOPE_OPTUNA_STORAGE),sqlite:///$(CURDIR)/optuna.db)
dashboard: $(STAMP)
	$(VENV)/bin/optuna-dashboard --host 127.0.0.1 "$(OPTUNA_STORAGE)"

# A team's tracking server; options from the environment (README, "Team setup"):
# CONVSCOPE_BACKEND_STORE_URI, CONVSCOPE_ARTIFACTS_DESTINATION, CONVSCOPE_SERVER_HOST/_PORT.
server: $(STAMP)
	$(VENV)/bin/convscope server

# docs/gallery.md and docs/gallery/*.png: screenshots of the MLflow UI, the compare report,
# `dvc plots show` and the interpret figures, in Debian's chromium; needs `make run` first.
gallery: $(STAMP)
	$(VENV)/bin/python docs/gallery.py

bench: $(STAMP)
	$(VENV)/bin/python bench/scratch_lines.py
	$(VENV)/bin/python bench/engine_vs_keras.py
	$(VENV)/bin/python bench/keras_mnist.py
	$(VENV)/bin/python bench/visuals.py

# .dvc/plots/offline.html: DVC's plots page with vega, vega-lite and vega-embed inlined from
# their npm packages, so `dvc plots show` renders without a network (.dvc/config names it).
VEGA_PACKAGES := vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
vendor-vega:
	set -e; tmp=$$(mktemp -d); out=.dvc/plots/offline.html; \
	(cd $$tmp && npm pack --silent $(VEGA_PACKAGES) >/dev/null); \
	{ printf '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>convscope plots</title>\n'; \
	  printf '<!-- `dvc plots show` puts its plots in the body. The vega libraries are inlined below, so the page\n'; \
	  printf '     renders offline; the template has no scripts placeholder, so DVC adds no CDN script tags. -->\n'; \
	  for pkg in $(VEGA_PACKAGES); do \
	    name=$${pkg%@*}; version=$${pkg#*@}; \
	    tar xzf $$tmp/$$name-$$version.tgz -C $$tmp package/build/$$name.min.js; \
	    printf '<!-- %s %s (BSD-3-Clause), build/ of its npm package, inlined: `make vendor-vega` -->\n<script>\n' $$name $$version; \
	    cat $$tmp/package/build/$$name.min.js; printf '\n</script>\n'; \
	  done; \
	  printf '<style>\nbody { font-family: sans-serif; }\ntable { border-spacing: 15px; }\n</style>\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n'; \
	} > $$out.tmp; mv $$out.tmp $$out; rm -rf $$tmp
