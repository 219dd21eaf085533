"""The Rich console a command prints its results on (stdout).

Rich wraps to 80 columns when stdout is not a terminal, which splits qualified names across
lines in a file or a pipe (`servetrace hops --engine vllm > f`). Piped output is for reading
in full or for grep, so it gets a width nothing real reaches and tables keep one row per line.
"""
from __future__ import annotations

import sys

from rich.console import Console

# Wide enough for any row the catalog or a replay report prints; Rich sizes tables to their
# content, so this is a ceiling, not padding.
PIPED_WIDTH = 1000


def stdout_console(json_flag: str | None = None, **options) -> Console:
    """A console for stdout that does not wrap when stdout is not a terminal. With `json_flag`,
    piped output also gets a hint on stderr that the flag gives machine-readable output."""
    if sys.stdout.isatty():
        return Console(**options)
    if json_flag:
        print(f"(stdout is not a terminal: lines are not wrapped; {json_flag} gives JSON)", file=sys.stderr)
    return Console(width=PIPED_WIDTH, **options)
