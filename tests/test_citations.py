"""Upstream citations (file:line + symbol, module:Qualified.name, Mirrors lines) hold against the
installed vLLM / SGLang source, and the checker catches a wrong name, a wrong range and a crop."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tracer.catalog.citations import (
    check_file_line,
    check_mirrors,
    check_repository,
    check_text,
    check_walkthroughs,
    installed_version,
)
from tracer.catalog.hops import load_catalog
from tracer.sitebuilder.builder import BuildOptions, build_site
from tracer.walkthroughs.errors import SiteBuildError

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = {"vllm": "0.33.0", "sglang": "0.5.23"}

needs_upstream = pytest.mark.skipif(
    installed_version("vllm") != VERSIONS["vllm"] or installed_version("sglang") != VERSIONS["sglang"],
    reason="the citations are written for vLLM 0.33.0 and SGLang 0.5.23",
)

PAGE = """---
moves: [throughput]
---
# Planted

{body}
"""


def _walkthrough(tmp_path: Path, body: str) -> Path:
    directory = tmp_path / "walkthroughs"
    directory.mkdir(parents=True)
    (directory / "01-planted.md").write_text(PAGE.format(body=body))
    shutil.copy(ROOT / "walkthroughs" / "anchors.lock.json", directory)
    return directory


@needs_upstream
def test_every_citation_in_the_repository_holds():
    report = check_repository(ROOT)
    assert report.problems == [], "\n".join(str(p) for p in report.problems)
    # The walkthroughs, hops.yaml notes and engine docstrings cite well over a hundred names.
    assert report.checked > 150
    assert report.skipped == {}


@needs_upstream
def test_a_planted_wrong_name_fails():
    good = "`vllm/v1/core/sched/scheduler.py:844-845 Scheduler.schedule`"
    assert check_text(good, "x.md", versions=VERSIONS).problems == []
    for bad in ("`vllm/v1/core/sched/scheduler.py:844-845 Scheduler.schedulx`",
                "`vllm.v1.core.block_pool:BlockPool.touchx`",
                "`vllm.v1.core.no_such_module:BlockPool`"):
        report = check_text(bad, "x.md", versions=VERSIONS)
        assert len(report.problems) == 1, bad
        assert report.problems[0].file == "x.md"


@needs_upstream
def test_a_planted_wrong_range_fails():
    # Scheduler._preempt_request ends well before line 1850 (the next method starts there).
    assert check_file_line("vllm/v1/core/sched/scheduler.py", 1816, 1843, "Scheduler._preempt_request") is None
    why = check_file_line("vllm/v1/core/sched/scheduler.py", 1816, 1850, "Scheduler._preempt_request")
    assert why is not None and "not inside Scheduler._preempt_request" in why
    report = check_text("line one\n`vllm/v1/core/sched/scheduler.py:600-610 Scheduler.schedule`", "x.md", versions=VERSIONS)
    assert [(p.line, "not inside" in p.message) for p in report.problems] == [(2, True)]


@needs_upstream
def test_a_file_line_without_its_symbol_fails():
    report = check_text("see vllm/v1/core/sched/scheduler.py:844.", "x.md", versions=VERSIONS)
    assert len(report.problems) == 1 and "must name its symbol" in report.problems[0].message


@needs_upstream
def test_a_pane_cropped_before_what_its_note_names_fails(tmp_path):
    note = ("::: note\n    Gives each request `num_tokens_with_spec + num_output_placeholders -"
            " num_computed_tokens` tokens.\n")
    catalog = load_catalog()
    target = "::: code target=vllm:vllm.v1.core.sched.scheduler:Scheduler.schedule"
    cropped = check_walkthroughs(_walkthrough(tmp_path / "a", f"{target} lines=93-135\n{note}"), catalog)
    assert any("num_tokens_with_spec" in p.message and p.line == 6 for p in cropped.problems), cropped.problems
    widened = check_walkthroughs(_walkthrough(tmp_path / "b", f"{target} lines=95-150\n{note}"), catalog)
    assert widened.problems == []


@needs_upstream
def test_mirrors_lines_have_one_spelling_and_name_what_exists():
    ok = check_mirrors("    # Mirrors: vllm.v1.core.block_pool:BlockPool.touch (vllm 0.33.0)\n", "e.py")
    assert ok.problems == [] and ok.checked == 1
    module = check_mirrors('"""Mirrors: vllm.v1.core.block_pool, sglang.srt.mem_cache.radix_cache:RadixCache (vllm 0.33.0)\n', "e.py")
    assert [p.citation for p in module.problems] == ["sglang.srt.mem_cache.radix_cache:RadixCache"]  # wrong package tag
    for bad in ("    # Mirrors vllm.v1.core.block_pool.BlockPool.touch\n",
                "    # mirrors the role of vllm.v1.core.block_pool:BlockPool\n",
                '    """A pool; Mirrors: vllm.v1.core.block_pool:BlockPool (vllm 0.33.0)."""\n',
                "    # Mirrors: vllm.v1.core.block_pool:BlockPool.touchx (vllm 0.33.0)\n",
                "    # Mirrors: vllm.v1.core.kv_cache_utils:BlockPool (vllm 0.33.0)\n"):
        assert len(check_mirrors(bad, "e.py").problems) == 1, bad


def test_citations_of_a_version_not_installed_are_skipped_and_said_so():
    report = check_mirrors("# Mirrors: vllm.v1.core.block_pool:BlockPool.touch (vllm 0.0.1)\n", "e.py")
    assert report.problems == [] and report.checked == 0
    assert list(report.skipped) and "the citations are for 0.0.1" in next(iter(report.skipped))
    text = check_text("`sglang/srt/managers/scheduler.py:1 Scheduler`", "x.md", versions={"sglang": "0.0.1"})
    assert text.checked == 0 and sum(text.skipped.values()) == 1


@needs_upstream
def test_site_build_fails_on_a_bad_citation(tmp_path):
    walkthroughs = _walkthrough(tmp_path, "Preemption (`vllm/v1/core/sched/scheduler.py:1816-1850 Scheduler._preempt_request`).\n")
    with pytest.raises(SiteBuildError) as failure:
        build_site(BuildOptions(out=tmp_path / "out", walkthroughs=walkthroughs, run_mkdocs=False,
                                cache_dir=tmp_path / "cache"))
    assert "01-planted.md:6" in str(failure.value) and "not inside" in str(failure.value)
