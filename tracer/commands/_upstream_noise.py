"""Upstream warnings (torch deprecations, vllm._C import, SSM cache, AWQ/GGUF) counted, not printed.

Loading vLLM and SGLang's scheduler modules on a CPU prints a dozen warnings that say nothing
about the user's run. The CLI installs this filter around every command: warnings and log
records at WARNING level that come from outside servetrace are counted and summarised in one
line at the end; --verbose shows them all. servetrace's own warnings (loggers tracer.*,
engine.*, servetrace; warnings raised from our source files) and every ERROR are always shown.

Two standard hooks do it: warnings.showwarning (the documented place to redirect warnings) and
a logging.Filter on each logger. A filter on a logger sees exactly the records created on that
logger, so it goes on every logger that exists when the filter is installed and, through a
Logger subclass set with logging.setLoggerClass, on every logger created afterwards (torch,
vLLM and SGLang create theirs when the command imports them). That also covers libraries that
give their logger handlers of their own and stop propagation (torch, vLLM), which a handler on
the root logger would never see.
"""
from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import engine
import tracer

OUR_LOGGERS = ("tracer", "engine", "servetrace")
OUR_DIRS = tuple(str(Path(m.__file__).resolve().parent) for m in (tracer, engine))


def is_ours(logger_name: str) -> bool:
    return any(logger_name == n or logger_name.startswith(n + ".") for n in OUR_LOGGERS)


class UpstreamNoise(logging.Filter):
    """Counts (and, unless verbose, drops) upstream WARNING records and warnings."""

    def __init__(self, verbose: bool = False) -> None:
        super().__init__()
        self.verbose = verbose
        self.hidden = 0
        self._installed = False
        self._previous_showwarning = warnings.showwarning
        self._previous_logger_class: type[logging.Logger] = logging.getLoggerClass()
        self._filtered: list[logging.Logger] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or is_ours(record.name):
            return True
        if self.verbose:
            return True
        self.hidden += 1
        return False

    def showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        ours = str(Path(filename).resolve()).startswith(OUR_DIRS)
        if ours or self.verbose:
            self._previous_showwarning(message, category, filename, lineno, file, line)
        else:
            self.hidden += 1

    def install(self) -> "UpstreamNoise":
        if self._installed:
            return self
        self._installed = True
        warnings.showwarning = self.showwarning
        noise = self

        class FilteredLogger(self._previous_logger_class):  # type: ignore[misc, valid-type]
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **kwargs)
                self.addFilter(noise)
                noise._filtered.append(self)

        logging.setLoggerClass(FilteredLogger)
        existing = [logging.getLogger()] + [
            obj for obj in logging.Logger.manager.loggerDict.values() if isinstance(obj, logging.Logger)
        ]
        for logger in existing:
            logger.addFilter(self)
            self._filtered.append(logger)
        return self

    def uninstall(self) -> None:
        """Restore the hooks (tests run many commands in one process)."""
        if not self._installed:
            return
        self._installed = False
        if warnings.showwarning == self.showwarning:
            warnings.showwarning = self._previous_showwarning
        logging.setLoggerClass(self._previous_logger_class)
        for logger in self._filtered:
            logger.removeFilter(self)
        self._filtered.clear()

    def summary(self) -> str | None:
        if not self.hidden:
            return None
        noun = "warning" if self.hidden == 1 else "warnings"
        return f"{self.hidden} upstream {noun} hidden; --verbose shows them"


def print_summary(noise: UpstreamNoise) -> None:
    line = noise.summary()
    if line:
        print(line, file=sys.stderr)
