"""Lab recipes: experiments the site builder runs to generate a walkthrough's tables.

A recipe is a function of keyword parameters returning a LabResult. `::: lab NAME key=value`
runs it (or reads the cached result, see tracer.labs.cache); `servetrace site lab NAME`
runs the same function from the command line, which is the command each table shows.
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable


class LabError(ValueError):
    """An unknown lab, a bad parameter, or a lab run that failed."""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list]
    caption: str = ""


@dataclass
class LabResult:
    name: str
    title: str
    params: dict
    tables: list[Table]
    notes: list[str] = field(default_factory=list)
    environment: str = ""
    seconds: float = 0.0
    cached: bool = False

    @property
    def command(self) -> str:
        args = " ".join(f"{k}={_format_param(v)}" for k, v in sorted(self.params.items()))
        return f"servetrace site lab {self.name}" + (f" {args}" if args else "")

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("cached")
        return data

    @classmethod
    def from_json(cls, data: dict) -> "LabResult":
        data = dict(data)
        data["tables"] = [Table(**t) for t in data["tables"]]
        return cls(**data)


@dataclass(frozen=True)
class Lab:
    name: str
    title: str
    run: Callable[..., LabResult]
    defaults: dict


def _format_param(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def load_average() -> str:
    """The 1-minute load average: how many others shared the cores while a lab timed something."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def environment(load_at_start: str | None = None) -> str:
    """Where a lab ran: milliseconds mean little without the machine and how busy it was (the
    1-minute load average now, and when the lab started if the lab says)."""
    load = f"load average (1 min) {load_at_start} at the start, {load_average()} at the end" if load_at_start else \
        f"load average (1 min) {load_average()}"
    return (f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} cores visible, {load}, "
            f"{platform.python_implementation()} {platform.python_version()}, no GPU")


def parse_params(lab: Lab, given: dict[str, str]) -> dict:
    """Directive / command-line strings -> typed parameters, checked against the lab's defaults."""
    params = dict(lab.defaults)
    for key, text in given.items():
        if key not in lab.defaults:
            raise LabError(f"lab {lab.name} has no parameter {key!r}; it takes {', '.join(sorted(lab.defaults)) or 'none'}")
        default = lab.defaults[key]
        try:
            if isinstance(default, list):
                kind = type(default[0]) if default else int
                params[key] = [kind(part) for part in text.split(",") if part]
            elif isinstance(default, bool):
                params[key] = text.lower() in ("1", "true", "yes", "on")
            else:
                params[key] = type(default)(text)
        except ValueError:
            raise LabError(f"lab {lab.name}: {key}={text!r} is not a {type(default).__name__}") from None
    return params
