#!/usr/bin/env bash
# Before a venv is built from nothing: is there room for it? pip fails half-way with
# "[Errno 28] No space left on device" otherwise, leaving a broken venv and no hint of the size.
# Usage: check-disk.sh VENV_DIR GIB_NEEDED   (sizes measured on this machine, rounded up)
set -euo pipefail
venv=$1 need_gib=$2
# A venv that exists is being updated, not built: it needs far less, and pip reports its own errors.
[ -x "$venv/bin/python" ] && exit 0
free_kib() { df -Pk "$1" | awk 'NR==2 {print $4}'; }
for dir in "$(dirname "$venv")" "${TMPDIR:-/tmp}"; do
  have_kib=$(free_kib "$dir")
  if [ "$have_kib" -lt $((need_gib * 1024 * 1024)) ]; then
    printf 'setup: %s needs about %s GiB free; %s has %s GiB free.\n' \
      "$venv" "$need_gib" "$dir" "$((have_kib / 1024 / 1024))" >&2
    printf 'setup: free some space (or point TMPDIR at a roomier disk) and run make again.\n' >&2
    exit 1
  fi
done
