"""Build a small C source into a shared library on first use and load it with ctypes (CPU kernels).

For engine/cpu_decode_attention.py and engine/cpu_elementwise.py: plain C, no torch headers, so a
build takes about a second. Built with the system's cc (-O3 -march=native, OpenMP) into
~/.cache/servetrace/kernels/, named by a hash of the source, the flags, the compiler and this
CPU's feature flags; a concurrent builder never loads half a file (atomic rename). The OpenMP
runtime it links is the libgomp torch has already loaded (same soname), so both share one pool.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-fno-math-errno"]
# Set to 0 to run every CPU kernel's torch fallback instead (the plain alternative, for A/B runs).
SWITCH = "SERVETRACE_CPU_KERNELS"
logger = logging.getLogger(__name__)


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "servetrace" / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def load(name: str, source: str) -> ctypes.CDLL | None:
    """The library built from source, or None: switched off, no cc, a failed build or load."""
    if os.environ.get(SWITCH, "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    key = hashlib.sha256("\0".join([source, *FLAGS, compiler, _cpu_flags()]).encode()).hexdigest()[:16]
    path = _cache_dir() / f"{name}-{key}.so"
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                c_file = Path(tmp) / f"{name}.c"
                c_file.write_text(source)
                built = Path(tmp) / path.name
                subprocess.run([compiler, *FLAGS, str(c_file), "-o", str(built)], check=True, capture_output=True, timeout=120)
                os.replace(built, path)
        except (OSError, subprocess.SubprocessError) as error:
            # Slower, not wrong: say so once per kernel, so a user who sees slow steps knows why.
            stderr = getattr(error, "stderr", b"") or b""
            logger.warning("CPU kernel %s did not build with %s (%s%s); using its torch fallback", name, compiler,
                           type(error).__name__, f": {stderr.decode(errors='replace').strip()[:300]}" if stderr else "")
            return None
    try:
        return ctypes.CDLL(str(path))
    except OSError as error:
        logger.warning("CPU kernel %s did not load (%s); using its torch fallback", name, error)
        return None
