# expo-batch: the two commands of the README, and the extras.
PY ?= python3
PIP := $(PY) -m pip

.PHONY: install demo test lint test-vllm bench

# torch first, from the CPU wheel on disk: letting pip resolve torch pulls a multi-GB CUDA build.
install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'

# The bundled tiny example: the whole batch run on CPU, then the results table.
demo: install
	expo-batch run examples/tiny/registry.yaml
	expo-batch report outputs/tiny

test: install
	$(PY) -m pytest -q

lint:
	ruff check expo_batch tests scripts benchmarks
	ruff format --check expo_batch tests scripts benchmarks

# vLLM (CPU build) in its own venv, then the tests marked `vllm`.
test-vllm:
	bash scripts/test_vllm.sh
