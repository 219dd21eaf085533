"""HTML for the pieces of a page: code panes with notes beside them, timelines, lab tables.

Templates live in site/templates (data, not a package). Note bodies are Markdown rendered here,
with links to other walkthroughs (`x.md#frag`) rewritten to the built page (`x.html#frag`),
since MkDocs leaves raw HTML alone.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import markdown
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from tracer.sitebuilder.anchors import CodeRef
from tracer.sitebuilder.timeline import Timeline, hop_colours

SITE_DIR = Path(__file__).resolve().parents[2] / "site"
TEMPLATES = SITE_DIR / "templates"
ASSETS = SITE_DIR / "assets"
HIGHLIGHT_CLASS = "st-hl"
MD_LINK = re.compile(r'href="([A-Za-z0-9_.\-]+)\.md(#[^"]*)?"')


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["hop_id"] = hop_id
    return env


def hop_id(hop: str) -> str:
    return "hop-" + hop.replace(".", "-")


def pygments_css() -> str:
    return HtmlFormatter(style="friendly").get_style_defs(f".{HIGHLIGHT_CLASS}")


def note_html(body: str) -> str:
    html = markdown.markdown(body, extensions=["fenced_code", "tables"])
    return MD_LINK.sub(lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', html)


def linked_pages(body: str) -> list[str]:
    """The `x.md` pages a note body links to (checked by the builder)."""
    return [m.group(1) + ".md" for m in MD_LINK.finditer(markdown.markdown(body))]


def code_html(ref: CodeRef) -> str:
    formatter = HtmlFormatter(cssclass=HIGHLIGHT_CLASS, linenos="inline", linenostart=ref.first_shown, wrapcode=True)
    return highlight(ref.source, PythonLexer(), formatter)


def render_code(anchor_text: str, refs: list[CodeRef], notes: list[tuple[dict, str]]) -> str:
    panes = [{"ref": ref, "code": code_html(ref)} for ref in refs]
    rendered_notes = [{"args": args, "html": note_html(body)} for args, body in notes]
    return environment().get_template("code.html.j2").render(anchor=anchor_text, panes=panes, notes=rendered_notes)


def render_note(args: dict, body: str) -> str:
    return environment().get_template("note.html.j2").render(args=args, html=note_html(body))


def render_trace(name: str, description: str, timeline: Timeline, commands: list[str], downloads: list[tuple[str, str]]) -> str:
    used = [h for h, _, _, _ in timeline.hop_summary]
    legend = [(hop, colour) for hop, colour in hop_colours().items() if hop in used]
    return environment().get_template("trace.html.j2").render(
        name=name, description=description, t=timeline, legend=legend, commands=commands, downloads=downloads)


def render_lab(result: Any) -> str:
    """A lab's result (tracer.labs.registry.LabResult, handed in by the command) as HTML."""
    return environment().get_template("lab.html.j2").render(lab=result)


def render_markdown_page(template: str, **context) -> str:
    return environment().get_template(template).render(**context)
