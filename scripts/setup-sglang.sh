#!/usr/bin/env bash
# Builds .venv-sglang: SGLang 0.5.23 for CPU (torch 2.14.1 + torchvision 0.29.1 from this
# machine's disk) plus servetrace (editable, --no-deps) and what its tracing imports, for the
# live-server tests and `servetrace demo --engine sglang`. Called by the Makefile when a
# requirement file or the stand-in changes (stamp .venv-sglang/.servetrace-stamp); safe to rerun.
#
# - First run (no lock): pip resolves requirements/live-sglang.txt, sglang goes in with --no-deps
#   (its wheel requires the whole CUDA stack; see the header of live-sglang.txt), and the
#   resulting `pip freeze` is written to requirements/live-sglang.lock.txt. Later runs install that
#   lock with --no-deps, so they are reproducible and need no resolver.
# - SGLang's CPU path imports ops from `sgl_kernel`, whose CPU build no registry ships (it is
#   built from source only). scripts/sgl_kernel_cpu_standin is a clearly named STAND-IN: it
#   implements the one op a torch_native CPU run calls (assign_req_to_token_pool_cpu, plain
#   torch) and raises NotImplementedError naming the op if any other is called. It is installed
#   here, into .venv-sglang only.
# - Run the server as: SGLANG_USE_CPU_ENGINE=1 .venv-sglang/bin/python -m sglang.launch_server
#   --device cpu --attention-backend torch_native --disable-overlap-schedule --grammar-backend none
#   --sleep-on-idle ... (tracer/live/sglang.py does it).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${SGLANG_VENV:-.venv-sglang}
PY=$VENV/bin/python
REQS=requirements/live-sglang.txt
NODEPS=requirements/live-sglang-nodeps.txt
LOCK=requirements/live-sglang.lock.txt
STANDIN=scripts/sgl_kernel_cpu_standin
STAMP=$VENV/.servetrace-stamp

# pip's config on this machine names index folders that may be absent; drop those warnings only.
pipq() { "$PY" -m pip "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2); }

test -x "$PY" || "$PYTHON" -m venv "$VENV"
pipq install -q --upgrade pip==25.3
rm -f "$STAMP"

# The torch pins again as constraints, so that no resolve can swap in another torch.
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
grep -E '^(torch|torchvision)==' "$REQS" > "$CONSTRAINTS"

if [ -f "$LOCK" ]; then
  echo "setup-sglang: installing $LOCK (--no-deps)"
  pipq install -q --no-deps -c "$CONSTRAINTS" -r "$LOCK"
else
  echo "setup-sglang: resolving $REQS (no lock yet; a minute or two)"
  pipq install -q -c "$CONSTRAINTS" -r "$REQS"
  pipq install -q --no-deps -r "$NODEPS"
fi
pipq install -q --no-deps --force-reinstall "./$STANDIN"
rm -rf "$STANDIN/build" "$STANDIN"/*.egg-info  # setuptools' in-tree leftovers
pipq install -q --no-deps -e .

if [ ! -f "$LOCK" ]; then
  {
    echo "# pip freeze of $VENV after resolving $REQS and $NODEPS (scripts/setup-sglang.sh writes it; delete to re-resolve)."
    echo "# Not in it: servetrace (editable) and the sgl_kernel stand-in ($STANDIN), installed from this repo."
    "$PY" -m pip freeze --all --exclude pip --exclude servetrace --exclude servetrace-sgl-kernel-cpu-standin
  } > "$LOCK"
  echo "setup-sglang: wrote $LOCK"
fi

# pip check: the lines expected here are left out, any other line is a real conflict.
# - sglang's Requires-Dist names the CUDA stack and a few server extras it is installed without;
# - servetrace's pyproject lists the mini engine's and the site's packages (installed --no-deps here).
"$PY" -m pip check 2>&1 | grep -v -E "^sglang 0\.5\.23 requires |^servetrace .* requires " || true
SGLANG_USE_CPU_ENGINE=1 "$PY" -c "
import sgl_kernel, sglang, torch
assert getattr(sgl_kernel, 'STANDIN', False), 'sgl_kernel is not the servetrace stand-in'
import sglang.srt.mem_cache.allocation, sglang.srt.entrypoints.http_server
print('setup-sglang: sglang', sglang.__version__, 'torch', torch.__version__, '(sgl_kernel: servetrace CPU stand-in)')
"
touch "$STAMP"
