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

# C shared by the kernels: bf16 <-> float32 conversions and a vectorizable exp.
PRELUDE = r"""
#include <stdint.h>

/* Bit casts through memcpy, not unions, so that loops over them vectorize. */
static inline float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; __builtin_memcpy(&f, &u, 4); return f; }
static inline uint16_t f32_to_bf16(float f) {  /* round to nearest even, as torch's .to(bfloat16) */
    uint32_t u; __builtin_memcpy(&u, &f, 4);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40 : rounded);  /* NaN stays NaN */
}

/* exp(x) by Cody-Waite range reduction and a degree-6 polynomial (Cephes' expf, ~1e-7 relative
   error), branch-free so the compiler vectorizes it (libm's expf is one scalar call per element).
   The exponent is clamped to [-126, 127]: far outside +-87 the result is ~0 or ~2^127 (finite),
   all silu needs; softmax calls it on scores minus their max, x <= 0, where the upper
   clamp never applies. */
static inline float exp_f(float x) {
    const float t = x * 1.44269504088896341f + 0.5f;
    const int32_t i = (int32_t)t;
    const int32_t k = i - (int32_t)(t < (float)i);  /* floor(t) */
    const float n = (float)k;
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = k < -126 ? -126 : k;
    e = e > 127 ? 127 : e;
    const uint32_t bits = (uint32_t)(e + 127) << 23;
    float scale;
    __builtin_memcpy(&scale, &bits, 4);  /* 2^e */
    return p * scale;
}
"""


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
