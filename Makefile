# lmforge: the two commands a user needs are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# NOTE: torch first, pinned: a bare `torch` requirement would pull the multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,serve]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -n 2 tests

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check lmforge tests bench

# Pretrain the `demo` preset on the built-in corpus (configs/demo.toml), then generate from the result.
demo: install
	$(BIN)/lmforge pretrain --config configs/demo.toml
	$(BIN)/lmforge generate --model runs/demo --prompt "class Stack:" --max-new-tokens 200 --temperature 0.6 --top-k 40 --seed 0

bench: install
	$(BIN)/python -m bench

bench-quick: install
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
