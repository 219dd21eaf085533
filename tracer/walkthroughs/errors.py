"""Build errors that name the walkthrough and the anchor at fault."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    walkthrough: str  # file name, e.g. 03-paged-kv.md
    line: int
    anchor: str  # the directive line as written
    message: str

    def __str__(self) -> str:
        return f"{self.walkthrough}:{self.line}: {self.anchor!r}: {self.message}"


class SiteBuildError(ValueError):
    """The site cannot be built; every problem found is listed, one per line."""

    def __init__(self, problems: list[Problem] | str) -> None:
        self.problems = [] if isinstance(problems, str) else list(problems)
        text = problems if isinstance(problems, str) else "\n".join(f"  {p}" for p in self.problems)
        header = "" if isinstance(problems, str) else f"{len(self.problems)} problem(s) in the walkthroughs:\n"
        super().__init__(header + text)
