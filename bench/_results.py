"""What every CPU benchmark records next to its numbers, and where it writes them.

bench/results/<name>.json holds {"meta": ..., **payload}; <name>.md a title, the command, the
machine line, then the script's own Markdown body.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name and its bf16 matrix features (/proc/cpuinfo): results from another CPU are not comparable."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    features = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(features) or 'no native bf16'})"


def run_meta(**extra: object) -> dict:
    """The command that produced a result, the machine, the time and the load it ran under."""
    return {
        "command": f".venv/bin/python bench/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_at_end": tuple(round(x, 2) for x in os.getloadavg()),
        **extra,
    }


def write_results(name: str, title: str, meta: dict, payload: dict, body: list[str]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, **payload}, indent=2) + "\n")
    header = [
        f"# {title}", "",
        f"Command: `{meta['command'].strip()}`  ",
        f"Machine: {meta['machine']}; {meta['date']}; load average at end {meta['load_average_at_end']}", "",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(header + body) + "\n")
