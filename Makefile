# Two commands do everything on a fresh machine: `make demo` (set-up, local fleet, curated notebooks)
# and `make test` (set-up, the whole test suite). The rest are conveniences.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test lab dashboard up down lint benchmarks binder-check clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# constraints.txt pins torch to the local CPU build; anything else pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	# A kernel that resolves to this venv's Python, for papermill, Voila and JupyterLab.
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (workbench)"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/workbench demo

test: $(STAMP)
	$(BIN)/python -m pytest

binder-check: $(STAMP)
	WORKBENCH_BINDER_CHECK=1 $(BIN)/python -m pytest tests/test_binder.py

lab: $(STAMP)
	$(BIN)/workbench status >/dev/null 2>&1 || $(BIN)/workbench up
	$(BIN)/jupyter lab notebooks/

dashboard: $(STAMP)
	$(BIN)/workbench dashboard

up: $(STAMP)
	$(BIN)/workbench up

down: $(STAMP)
	$(BIN)/workbench down

lint: $(STAMP)
	$(BIN)/ruff check workbench widgets tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

benchmarks: $(STAMP)
	for script in benchmarks/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) runs test-artifacts .pytest_cache .mypy_cache .ruff_cache
