"""What the site builder needs of the experiments behind a page, handed in by its caller.

A walkthrough's `::: lab NAME` table and `::: trace recipe=NAME` timeline are produced by running
the engine or replay (tracer.labs). The builder renders them but imports neither labs, replay nor
engine: `servetrace site build` (tracer.commands.site) passes an Experiments that runs them.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class ExperimentError(Exception):
    """A lab or recipe is unknown, its parameters are wrong, or it failed: one line for the page's problem list."""


@dataclass(frozen=True)
class RecordedTrace:
    description: str  # a sentence for the timeline's caption
    commands: list[str]  # the commands that recorded it, shown under the timeline
    trace: Path  # OTLP/JSON lines
    workload: Path | None = None  # the replay workload, offered for download beside the trace


class Experiments(Protocol):
    def lab_names(self) -> Collection[str]: ...

    def check_lab(self, name: str, params: dict[str, str]) -> None:
        """Raise ExperimentError when `name` is no lab or `params` do not fit it."""

    def run_lab(self, name: str, params: dict[str, str], cache_dir: Path) -> Any:
        """The lab's result, for site/templates/lab.html.j2 (name, title, tables, ...; cached and
        seconds for the build log). Raise ExperimentError when it fails."""

    def recipe_names(self) -> Collection[str]: ...

    def record_trace(self, name: str, cache_dir: Path) -> RecordedTrace:
        """Record the recipe's trace (or reuse a cached recording). Raise ExperimentError when it fails."""


class NoExperiments:
    """A builder with nothing to run: a page that asks for a lab or a recipe is a problem."""

    def lab_names(self) -> Collection[str]:
        return ()

    def check_lab(self, name: str, params: dict[str, str]) -> None:
        raise ExperimentError(f"no lab named {name!r}: this build runs no labs (servetrace site build does)")

    def run_lab(self, name: str, params: dict[str, str], cache_dir: Path) -> Any:
        self.check_lab(name, params)

    def recipe_names(self) -> Collection[str]:
        return ()

    def record_trace(self, name: str, cache_dir: Path) -> RecordedTrace:
        raise ExperimentError(f"no trace recipe named {name!r}: this build records no traces (servetrace site build does)")
