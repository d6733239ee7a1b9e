# Two entry points, each doing its own setup: `make demo` and `make test`.
# torch is pinned to the CPU build that this machine kind has on disk; the package itself
# only asks for a range (see pyproject.toml). The docs tooling is an extra that `make test`
# and `make docs` install for themselves; the demo needs none of it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.graphopt-installed
DOCS_STAMP := $(VENV)/.graphopt-docs-installed

.PHONY: demo test test-full docs bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[dev,export,train,zoo,bench]'
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

DEMO_OUT := demo-out

demo: $(STAMP)
	$(VENV)/bin/graphopt run --zoo minilm --out $(DEMO_OUT) --preset O3 --target ort --quantize dynamic --bench-shape input_ids=1x128

test: $(DOCS_STAMP)
	$(PY) -m pytest -n 2 -q

test-full: $(DOCS_STAMP)
	$(PY) -m pytest -n 2 -q -m "slow or not slow" --full

docs: $(DOCS_STAMP)
	$(VENV)/bin/mkdocs build --strict

# Every benchmark script in turn (hours on 2 cores; time nothing else meanwhile), then the plots.
bench: $(STAMP)
	$(PY) benchmarks/bench_truth.py --rounds 3
	$(PY) benchmarks/cleanup_vs_peers.py --repeat 7
	$(PY) benchmarks/fusion_vs_peers.py --repeat 1
	$(PY) benchmarks/quant_vs_ort.py
	$(PY) benchmarks/quant_static_vs_ort.py --bert-memory
	$(PY) benchmarks/large_model_memory.py
	$(PY) benchmarks/foreign_models.py
	$(PY) benchmarks/compression_vs_peers.py
	$(PY) benchmarks/session_load.py
	$(PY) benchmarks/precision_vs_peers.py
	$(PY) benchmarks/distill.py
	$(PY) benchmarks/student_onnx_coverage.py
	$(PY) benchmarks/plot_results.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) site .pytest_cache
