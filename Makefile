# Two entry points, each doing its own setup: `make demo` and `make test`.
# torch is pinned to the CPU build that this machine kind has on disk; the package itself
# only asks for a range (see pyproject.toml).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.graphopt-installed

.PHONY: demo test test-full bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[dev,export,zoo,bench]'
	touch $(STAMP)

DEMO_OUT := demo-out

demo: $(STAMP)
	$(VENV)/bin/graphopt run --zoo minilm --out $(DEMO_OUT) --preset O3 --target ort --quantize dynamic --bench-shape input_ids=1x128

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

test-full: $(STAMP)
	$(PY) -m pytest -n 2 -q -m "slow or not slow" --full

bench: $(STAMP)
	$(PY) benchmarks/cleanup_vs_peers.py --repeat 7
	$(PY) benchmarks/bench_truth.py --rounds 3
	$(PY) benchmarks/fusion_vs_peers.py --repeat 1 --models minilm@dynamo,minilm@torchscript,bert-base@dynamo,gpt2@dynamo,gpt2@torchscript
	$(PY) benchmarks/quant_vs_ort.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
