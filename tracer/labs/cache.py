"""Results of lab and trace recipes, cached by their inputs.

The key is a hash of: the recipe name, its parameters, and a fingerprint of everything that
can change the result (our engine's source, the replay and tracer code, the site builder's
recipes, the installed vLLM / SGLang versions). Change any of them and the recipe reruns.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = REPO / "build" / "cache"
FINGERPRINT_GLOBS = (
    "engine/*.py",
    "tracer/replay/**/*.py",
    "tracer/instrument/**/*.py",  # the hooks, the spans they make (open_span, step_parts, lean_span, ...), the exporters
    "tracer/catalog/hops.yaml",
    "tracer/labs/*.py",  # the labs themselves: a changed lab reruns
)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


@lru_cache(maxsize=1)
def source_fingerprint() -> str:
    digest = hashlib.sha256()
    for pattern in FINGERPRINT_GLOBS:
        for path in sorted(REPO.glob(pattern)):
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    for package in ("vllm", "sglang", "torch"):
        digest.update(f"{package}={_version(package)}".encode())
    return digest.hexdigest()


def cache_key(kind: str, name: str, params: dict) -> str:
    payload = json.dumps({"kind": kind, "name": name, "params": params, "sources": source_fingerprint()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cache_path(cache_dir: Path, kind: str, name: str, params: dict, suffix: str) -> Path:
    return cache_dir / kind / f"{name}-{cache_key(kind, name, params)}{suffix}"
