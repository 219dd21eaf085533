"""Links from a code pane to the same lines of the pinned upstream release on GitHub.

Where an engine's source lives is data, in the catalog's engines section (tracer/catalog/hops.yaml):

    source: {repository: https://github.com/sgl-project/sglang, tag: "v{version}", root: python}

`tag` names the release's git tag (the version shown on the pane is put in), `root` the folder of
the repository that holds the importable package (SGLang's package is python/sglang/, vLLM's is
vllm/ at the top). The catalog model (tracer.catalog.hops.Engine) does not carry these keys, so
they are read here from the same file; an engine without `source` gets no link (ours, in engine/).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tracer.catalog.hops import CATALOG_PATH, CatalogError


@dataclass(frozen=True)
class SourceLink:
    repository: str  # https://github.com/OWNER/NAME
    tag: str  # a format string with {version}, e.g. "v{version}"
    root: str = ""  # the repository folder the package sits in ("" = the top)

    def url(self, version: str, file: str, first: int, last: int | None = None) -> str:
        """The GitHub page of `file` (relative to site-packages, e.g. sglang/srt/...) at the release
        of `version`, lines `first`..`last` highlighted."""
        path = f"{self.root.strip('/')}/{file}" if self.root.strip("/") else file
        lines = f"L{first}" if last is None or last == first else f"L{first}-L{last}"
        return f"{self.repository.rstrip('/')}/blob/{self.tag.format(version=version)}/{path}#{lines}"


def _parse(engine: str, spec: object) -> SourceLink:
    if not isinstance(spec, dict) or not isinstance(spec.get("repository"), str) or not isinstance(spec.get("tag"), str):
        raise CatalogError(f"engine {engine}: 'source' is a mapping with 'repository' and 'tag' (and optional 'root')")
    if not spec["repository"].startswith("https://github.com/"):
        raise CatalogError(f"engine {engine}: source repository {spec['repository']!r} is not a https://github.com/ URL")
    if "{version}" not in spec["tag"]:
        raise CatalogError(f"engine {engine}: source tag {spec['tag']!r} must contain {{version}}")
    return SourceLink(spec["repository"], spec["tag"], str(spec.get("root") or ""))


def source_links(catalog_path: str | Path | None = None) -> dict[str, SourceLink]:
    """{engine: SourceLink} for every catalog engine with a `source` entry."""
    path = Path(catalog_path or CATALOG_PATH)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from None
    engines = data.get("engines") or {}
    return {name: _parse(name, spec["source"]) for name, spec in engines.items() if isinstance(spec, dict) and "source" in spec}
