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


def run_meta(**extra: object) -> dict:
    """The command that produced a result, the machine, the time and the load it ran under."""
    return {
        "command": f".venv/bin/python bench/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
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
