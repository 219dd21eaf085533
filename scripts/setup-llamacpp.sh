#!/usr/bin/env bash
# Builds .cache/llamacpp/venv: llama-cpp-python 0.3.36 compiled from its sdist by pip, for the
# llama.cpp reference row of bench/peers_bench.py (batch-1 decode on the bundled GGUF as shipped).
# `make llamacpp` (and so `make bench`) runs it; `make setup` / `make test` do not (CI builds no llama.cpp).
#
# - Idempotent: the stamp .cache/llamacpp/stamp holds the pinned version and the CMake flags; a rerun
#   whose stamp matches does nothing. Change a flag (or delete the stamp) and it rebuilds.
# - CPU: AVX-512 (F/CD/VL/DQ/BW, VBMI, VNNI, BF16) and no AMX, named flag by flag with GGML_NATIVE=OFF
#   (-march=native would turn on AMX on a CPU that has it, and that build segfaulted here). The
#   script refuses a CPU without those AVX-512 features rather than build a library that dies on SIGILL.
# - Only what the binding loads (ctypes: libllama, libggml, libggml-base, libggml-cpu): no tests,
#   examples, tools, server, app, no mtmd (LLAVA_BUILD=OFF; llama_cpp imports mtmd_cpp only for a
#   multimodal chat handler) and no llama-common (scripts/llamacpp-no-common.cmake says why that
#   needs a project include). About 83 build steps instead of 193.
# - The build log is .cache/llamacpp/build.log, replaced by each run; progress every 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VERSION=0.3.36
DIR=.cache/llamacpp
VENV=$DIR/venv
PY=$VENV/bin/python
LOG=$DIR/build.log
STAMP=$DIR/stamp

# Every name below is an option of the sdist: ggml/CMakeLists.txt (GGML_*), vendor/llama.cpp's
# CMakeLists.txt (LLAMA_BUILD_*), the binding's CMakeLists.txt (LLAVA_BUILD).
CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
-DLLAMA_BUILD_APP=OFF -DLLAVA_BUILD=OFF"
INCLUDE=scripts/llamacpp-no-common.cmake
WANT="llama-cpp-python==$VERSION $CMAKE_FLAGS -DCMAKE_PROJECT_llama.cpp_INCLUDE=$INCLUDE $(sha256sum "$INCLUDE" | cut -c1-16)"

if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "setup-llamacpp: up to date ($STAMP)"
  exit 0
fi

# The flags above need these CPU features (/proc/cpuinfo names).
missing=""
for flag in sse4_2 avx avx2 fma f16c bmi2 avx512f avx512cd avx512vl avx512dq avx512bw avx512vbmi avx512_vnni avx512_bf16; do
  grep -qw "$flag" /proc/cpuinfo || missing="$missing $flag"
done
if [ -n "$missing" ]; then
  echo "setup-llamacpp: this CPU lacks$missing; the build targets AVX-512 with VBMI/VNNI/BF16 (edit CMAKE_FLAGS in $0)" >&2
  exit 1
fi

mkdir -p "$DIR"
rm -f "$STAMP"
test -x "$PY" || "$PYTHON" -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip==25.3

echo "setup-llamacpp: building llama-cpp-python==$VERSION from source (log $LOG; ~80 compile steps, long on 2 cores)"
start=$(date +%s)
# --no-binary: compile the sdist; --no-cache-dir: pip's wheel cache is keyed by the sdist, not by
# CMAKE_ARGS, so a cached wheel built with other flags must not be reused.
CMAKE_ARGS="$CMAKE_FLAGS -DCMAKE_PROJECT_llama.cpp_INCLUDE=$PWD/$INCLUDE" \
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
  "$PY" -m pip install -v --no-cache-dir --no-binary llama-cpp-python --force-reinstall \
  "llama-cpp-python==$VERSION" > "$LOG" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  sleep 30
  step=$(grep -o '^ *\[[0-9]*/[0-9]*\]' "$LOG" | tail -1 | tr -d ' ' || true)
  echo "setup-llamacpp: $(( ($(date +%s) - start) / 60 )) min, step ${step:-(configuring)}"
done
if ! wait "$pid"; then
  echo "setup-llamacpp: FAILED: pip could not build llama-cpp-python==$VERSION; last lines of $LOG:" >&2
  tail -n 25 "$LOG" >&2
  exit 1
fi

# The library must load, and say what it was built for (AVX512 = 1, no AMX).
if ! info=$("$PY" -c "import llama_cpp; print(llama_cpp.__version__, llama_cpp.llama_print_system_info().decode())" 2>&1); then
  echo "setup-llamacpp: FAILED: built, but import llama_cpp fails: $info" >&2
  exit 1
fi
echo "setup-llamacpp: built in $(( ($(date +%s) - start) / 60 )) min: $info" | tee -a "$LOG"
echo "$WANT" > "$STAMP"
