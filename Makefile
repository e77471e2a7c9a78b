# Two commands on a fresh machine: `make demo` runs the main job end to end on embedded defaults,
# `make test` runs the whole test suite. Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint bench bench-training clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints.txt pins torch to the local CPU build; an unpinned torch pulls several GB of CUDA wheels
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) jobs/demo.py --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q

# The inner loop: every module's unit tests, the goldens and one small end-to-end scoring run, in under 3 minutes.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) jobs/benchmark.py

bench-training: $(STAMP)
	$(PY) jobs/benchmark_training.py --adapters

clean:
	rm -rf $(VENV) demo_out .pytest_cache
