"""SVG screenshots of the explorer for the README (docs/screenshots/), driven through Pilot.

    python -m tracer.tui.screenshots ENGINE_TRACE REPLAY_OURS REPLAY_THEIRS [--out docs/screenshots]

ENGINE_TRACE: a trace of our engine serving requests that share a prefix; REPLAY_*: two traces
of one workload from `servetrace replay` (for the compare view).
"""
from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from tracer.tui.app import ExplorerApp

SIZE = (110, 32)


async def _shoot(paths: list[Path], keys: list[str], out: Path) -> None:
    app = ExplorerApp.from_paths(paths)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*keys)
        await pilot.pause()
        app.save_screenshot(filename=out.name, path=str(out.parent))


def save_screenshots(engine_trace: Path, ours: Path, theirs: Path, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = {
        # The second request: its prefix-cache hit, with the state panel at the lookup.
        "explorer-waterfall.svg": ([engine_trace], ["down", "enter", "n", "n", "n", "n"]),
        "explorer-source.svg": ([engine_trace], ["down", "enter", "n", "n", "n", "n", "s"]),
        "explorer-compare.svg": ([ours, theirs], ["c", "g"]),
    }
    written = []
    for name, (paths, keys) in shots.items():
        asyncio.run(_shoot(paths, keys, out_dir / name))
        written.append(out_dir / name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("engine_trace", type=Path)
    parser.add_argument("ours", type=Path)
    parser.add_argument("theirs", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    for path in save_screenshots(args.engine_trace, args.ours, args.theirs, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
