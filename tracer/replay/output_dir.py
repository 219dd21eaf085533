"""An output folder a command owns: it replaces what its previous run wrote there, and nothing else.

A manifest file (MANIFEST_NAME) in the folder lists the files the last run wrote. A new run
deletes those files first (so a trace exporter that appends starts from an empty file, and an
engine left out of this run leaves no stale trace beside the new compare.json), then records
each file it writes. Files the manifest does not list are never deleted. A non-empty folder
without a manifest was not written by us: it is refused unless the caller forces it, and even
then only the files this run writes are replaced.
"""
from __future__ import annotations

import json
from pathlib import Path

MANIFEST_NAME = ".servetrace-manifest.json"


class OutputDirError(ValueError):
    """A folder the command may not write into (the CLI prints it as one line)."""


class OutputDir:
    """Claim paths in `root` for one run of `command`; the manifest is rewritten after each claim,
    so a run that stops halfway still leaves a folder the next run recognises as its own."""

    def __init__(self, root: str | Path, command: str, force: bool = False) -> None:
        self.root = Path(root)
        self.command = command
        self.files: list[str] = []
        self.removed: list[str] = []
        if self.root.exists() and not self.root.is_dir():
            raise OutputDirError(f"{self.root} is a file, not a folder")
        previous = self._previous_files()
        if previous is None:
            leftovers = sorted(p.name for p in self.root.iterdir()) if self.root.is_dir() else []
            if leftovers and not force:
                shown = ", ".join(leftovers[:4]) + (", ..." if len(leftovers) > 4 else "")
                raise OutputDirError(
                    f"{self.root} is not empty ({shown}) and was not written by servetrace {command}; "
                    f"choose another --out, or pass --force to write into it (only the files this run "
                    f"writes are replaced)"
                )
            previous = []
        self.root.mkdir(parents=True, exist_ok=True)
        for name in previous:
            path = self.root / name
            # Only plain files directly listed; a name that escapes the folder is ignored.
            if path.parent.resolve() == self.root.resolve() and path.is_file():
                path.unlink()
                self.removed.append(name)
        self._write_manifest()

    def claim(self, name: str) -> Path:
        """The path for `name`, emptied and recorded as this run's (call before writing it)."""
        if Path(name).name != name or name == MANIFEST_NAME:
            raise ValueError(f"not a plain file name for an output folder: {name!r}")
        path = self.root / name
        path.unlink(missing_ok=True)  # force on a foreign folder: replace, never append
        if name not in self.files:
            self.files.append(name)
            self._write_manifest()
        return path

    def claim_dir(self, name: str) -> Path:
        """A subfolder for a nested command that keeps a manifest of its own (demo's replay/)."""
        if Path(name).name != name or name == MANIFEST_NAME:
            raise ValueError(f"not a plain folder name for an output folder: {name!r}")
        if name not in self.files:
            self.files.append(name)
            self._write_manifest()
        return self.root / name

    def _previous_files(self) -> list[str] | None:
        manifest = self.root / MANIFEST_NAME
        if not manifest.is_file():
            return None
        try:
            data = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            raise OutputDirError(f"{manifest} is unreadable; delete it or choose another --out") from None
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise OutputDirError(f"{manifest} does not list files; delete it or choose another --out")
        if data.get("command") != self.command:
            raise OutputDirError(
                f"{self.root} holds the output of servetrace {data.get('command')}, not {self.command}; choose another --out"
            )
        return files

    def _write_manifest(self) -> None:
        body = {"command": self.command, "files": self.files,
                "note": "written by servetrace: the next run replaces these files and deletes nothing else"}
        (self.root / MANIFEST_NAME).write_text(json.dumps(body, indent=1) + "\n")
