# Two commands: `make demo` and `make test`. Both set up what they need, idempotently:
# the venv is rebuilt only when a requirements file or pyproject.toml changes (stamp file).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.servetrace-setup-stamp
REQS   := requirements/base.txt requirements/upstream.txt requirements/nodeps.txt pyproject.toml

.PHONY: setup demo test bench docs clean

setup: $(STAMP)

$(STAMP): $(REQS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==25.3
	$(PY) -m pip install -q -r requirements/base.txt
	# vLLM and SGLang pin conflicting GPU stacks; their scheduler/cache modules need only base.txt.
	$(PY) -m pip install -q --no-deps -r requirements/nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	@bash scripts/setup-system.sh
	@touch $@

demo: setup
	$(VENV)/bin/servetrace demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/offline_throughput.py
	$(PY) bench/cpu_kernels.py
	$(PY) bench/replay_bench.py
	$(PY) bench/serve_bench.py
	$(PY) bench/trace_overhead.py

docs: setup
	$(VENV)/bin/servetrace site build

clean:
	rm -rf $(VENV) build dist *.egg-info
