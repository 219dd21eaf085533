"""The site builder's rules, without a browser: anchors resolve or the build fails naming them.

A broken anchor and a drifted upstream pin must each fail the build with a message that names
the walkthrough, the line and the directive; these checks run before any lab or trace, so
these tests are quick.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracer.catalog.hops import load_catalog
from tracer.commands.site import LabExperiments
from tracer.sitebuilder.builder import WALKTHROUGHS_DIR, BuildOptions, build_site
from tracer.walkthroughs.directives import load_walkthroughs, parse_walkthrough
from tracer.walkthroughs.errors import SiteBuildError
from tracer.labs.index import run_lab
from tracer.walkthroughs.notes import hop_notes
from tracer.sitebuilder.timeline import _pack
from tracer.traces.trace_file import SpanRecord

REPO = Path(__file__).resolve().parent.parent
MOVES = {"TTFT", "TPOT", "throughput", "memory"}


def _copy_walkthroughs(tmp_path: Path) -> Path:
    target = tmp_path / "walkthroughs"
    shutil.copytree(WALKTHROUGHS_DIR, target)
    return target


def _check_only(tmp_path: Path, walkthroughs: Path, **options) -> None:
    build_site(BuildOptions(out=tmp_path / "out", walkthroughs=walkthroughs, run_mkdocs=False,
                            cache_dir=tmp_path / "cache", experiments=LabExperiments(), **options))


def test_there_are_at_least_eight_walkthroughs_each_saying_what_it_moves():
    walkthroughs = load_walkthroughs(WALKTHROUGHS_DIR)
    assert len(walkthroughs) >= 8
    for walkthrough in walkthroughs:
        assert walkthrough.problems == []
        assert set(walkthrough.meta["moves"]) <= MOVES and walkthrough.meta["moves"], walkthrough.name
        assert walkthrough.directives("code"), f"{walkthrough.name} anchors no code"


def test_walkthroughs_reference_code_never_paste_it():
    for walkthrough in load_walkthroughs(WALKTHROUGHS_DIR):
        text = walkthrough.path.read_text()
        assert "```python" not in text and "def " not in text.replace("`def`", ""), walkthrough.name


def test_a_broken_anchor_fails_the_build_naming_walkthrough_and_anchor(tmp_path):
    walkthroughs = _copy_walkthroughs(tmp_path)
    (walkthroughs / "99-broken.md").write_text(
        "---\nmoves: [TTFT]\n---\n# Broken\n\n"
        "::: code hop=kv.no_such_hop\n\n"
        "::: code target=vllm:vllm.v1.core.block_pool:BlockPool.no_such_method\n\n"
        "::: code hop=kv.insert engines=vllm\n\n"
        "::: lab no-such-lab\n"
    )
    with pytest.raises(SiteBuildError) as failure:
        _check_only(tmp_path, walkthroughs)
    message = str(failure.value)
    assert "99-broken.md:6: '::: code hop=kv.no_such_hop': no hop named 'kv.no_such_hop'" in message
    assert "99-broken.md:8: '::: code target=vllm:vllm.v1.core.block_pool:BlockPool.no_such_method'" in message
    assert "'no_such_method' is not defined in vllm.v1.core.block_pool:BlockPool" in message
    assert "99-broken.md:10:" in message and "hop kv.insert has no vllm target" in message
    assert "99-broken.md:12: '::: lab no-such-lab': no lab named 'no-such-lab'" in message
    assert len(failure.value.problems) == 4


def test_a_drifted_catalog_pin_fails_the_build_naming_the_anchor(tmp_path):
    lock = json.loads((REPO / "tracer" / "catalog" / "hops.lock.json").read_text())
    spec = "vllm.v1.core.kv_cache_manager:KVCacheManager.get_computed_blocks"
    lock["vllm"]["targets"][spec]["sha256"] = "0" * 64
    drifted = tmp_path / "hops.lock.json"
    drifted.write_text(json.dumps(lock))
    with pytest.raises(SiteBuildError) as failure:
        _check_only(tmp_path, WALKTHROUGHS_DIR, lock=drifted)
    problems = failure.value.problems
    assert problems and all("drift" in p.message and spec in p.message for p in problems)
    named = {(p.walkthrough, p.anchor) for p in problems}
    assert ("04-prefix-caching-hash-vs-radix.md", "::: code hop=kv.match_prefix engines=mini,vllm only=KVCacheManager.get_computed_blocks") in named
    assert "sha256 000000000000 ->" in problems[0].message


def test_a_drifted_walkthrough_pin_fails_the_build(tmp_path):
    walkthroughs = _copy_walkthroughs(tmp_path)
    lock_path = walkthroughs / "anchors.lock.json"
    lock = json.loads(lock_path.read_text())
    spec = "vllm.v1.core.block_pool:BlockPool.touch"
    lock["vllm"]["targets"][spec]["sha256"] = "f" * 64
    lock_path.write_text(json.dumps(lock))
    with pytest.raises(SiteBuildError) as failure:
        _check_only(tmp_path, walkthroughs)
    anchors = {(p.walkthrough, p.anchor) for p in failure.value.problems}
    assert anchors == {
        ("04-prefix-caching-hash-vs-radix.md", f"::: code target=vllm:{spec}"),
        ("05-prefix-cache-hit-lab.md", f"::: code target=vllm:{spec}"),
    }
    assert all("servetrace site pin" in p.message for p in failure.value.problems)


def test_an_unpinned_upstream_target_fails_but_our_engine_needs_no_pin(tmp_path):
    walkthroughs = _copy_walkthroughs(tmp_path)
    (walkthroughs / "anchors.lock.json").write_text("{}")
    with pytest.raises(SiteBuildError) as failure:
        _check_only(tmp_path, walkthroughs)
    assert failure.value.problems and all("unpinned" in p.message for p in failure.value.problems)
    assert not any(p.anchor.startswith("::: code target=mini:") for p in failure.value.problems)


def test_directives_inside_fenced_code_are_text_and_only_notes_take_a_body(tmp_path):
    page = tmp_path / "x.md"
    walkthrough = parse_walkthrough(page, (
        "---\nmoves: TPOT\n---\n# X\n\n```\n::: code hop=not.checked\n```\n\n"
        "::: note hop=kv.allocate\n    body line\n\n    second paragraph\n\nafter\n\n"
        "::: lab preemption\n    pasted code\n\n::: frobnicate\n"
    ))
    assert walkthrough.meta["moves"] == ["TPOT"]
    (note,) = walkthrough.directives("note")
    assert note.body == "body line\n\nsecond paragraph" and note.args == {"hop": "kv.allocate"}
    assert walkthrough.directives("code") == [] and walkthrough.directives("lab") == []
    messages = [p.message for p in walkthrough.problems]
    assert any("'lab' takes no indented body" in m for m in messages)
    assert any("unknown directive 'frobnicate'" in m for m in messages)


def test_per_hop_notes_are_machine_readable():
    notes = hop_notes()
    hop_names = {h.name for h in load_catalog().hops}
    assert set(notes) <= hop_names
    assert len(notes) >= 10, "most hops should carry at least one note"
    for hop, hop_list in notes.items():
        for note in hop_list:
            assert note.hop == hop and note.text and note.engine in (None, "mini", "vllm", "sglang")
            assert (WALKTHROUGHS_DIR / note.walkthrough).is_file()


def test_lab_results_are_cached_by_their_inputs(tmp_path):
    first = run_lab("preemption", {"pool_blocks": "16,64", "engines": "mini"}, tmp_path)
    again = run_lab("preemption", {"pool_blocks": "16,64", "engines": "mini"}, tmp_path)
    other = run_lab("preemption", {"pool_blocks": "24,64", "engines": "mini"}, tmp_path)
    assert not first.cached and again.cached and not other.cached
    assert again.tables[0].rows == first.tables[0].rows
    assert [row[0] for row in first.tables[0].rows] == [15, 63]
    assert first.tables[0].rows[0][1] > 0 == first.tables[0].rows[1][1]  # a small pool preempts, a large one does not
    assert first.command == "servetrace site lab preemption engines=mini pool_blocks=16,64 requests=10"
    assert len(list((tmp_path / "labs").glob("preemption-*.json"))) == 2


def _span(start: int, end: int, index: int) -> SpanRecord:
    return SpanRecord("t", f"{index:016x}", None, "kv.allocate", "INTERNAL", start, end, {}, [], [], "UNSET", "", {}, "")


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 200)), max_size=60))
def test_timeline_rows_never_hold_overlapping_spans(intervals):
    spans = [_span(start, start + length, i) for i, (start, length) in enumerate(intervals)]
    rows = _pack(spans)
    assert sorted(s.span_id for row in rows for s in row) == sorted(s.span_id for s in spans)
    for row in rows:
        for left, right in zip(row, row[1:]):
            assert left.end_ns <= right.start_ns


# -- links to the pinned upstream source --------------------------------------------------------

GITHUB_BLOB = r"https://github\.com/(?P<repo>[\w.-]+/[\w.-]+)/blob/(?P<tag>[^/]+)/(?P<path>[\w/.-]+\.py)#L(?P<first>\d+)(?:-L(?P<last>\d+))?"


def _homepage(distribution: str) -> str:
    from importlib import metadata

    urls = metadata.metadata(distribution).get_all("Project-URL") or []
    return next(url.split(",", 1)[1].strip() for url in urls if url.lower().startswith("homepage,"))


def test_the_catalog_names_each_upstream_repository_as_its_installed_distribution_does():
    """The repository and tag of each pinned engine are catalog data; the repository must be the
    dist-info's Homepage and the tag the installed version (no network here: form, not existence)."""
    from tracer.sitebuilder.upstream import source_links

    catalog, links = load_catalog(), source_links()
    assert set(links) == {name for name, engine in catalog.engines.items() if engine.pinned}
    for name, link in links.items():
        engine = catalog.engines[name]
        distribution = engine.installed_distribution()
        if distribution is None:
            continue
        assert link.repository == _homepage(distribution), name
        assert link.tag.format(version=engine.installed_version()) == f"v{engine.installed_version()}"


def test_code_panes_link_to_the_release_tag_at_file_and_line(tmp_path):
    import re

    out = tmp_path / "out"
    build_site(BuildOptions(out=out, run_mkdocs=False, cache_dir=tmp_path / "cache", walkthroughs=_only_code(tmp_path)))
    html = (out / "docs" / "04-prefix-caching-hash-vs-radix.md").read_text()
    panes = re.findall(r'<section class="st-pane[^"]*" data-pane="\d+" data-engine="(\w+)".*?</section>', html, re.S)
    sections = re.findall(r'(<section class="st-pane.*?</section>)', html, re.S)
    assert {"mini", "vllm", "sglang"} <= set(panes)
    seen = set()
    for section in sections:
        engine = re.search(r'data-engine="(\w+)"', section).group(1)
        where = re.search(r'class="st-where[^"]*"[^>]*>([^<]+)<', section).group(1)
        link = re.search(r'<a class="st-where st-source-link" href="([^"]+)"', section)
        if engine == "mini":
            assert link is None  # ours has no release on GitHub
            continue
        match = re.fullmatch(GITHUB_BLOB, link.group(1))
        assert match, link.group(1)
        file, line = where.split(":")
        version = load_catalog().engines[engine].installed_version()
        expected = {"vllm": ("vllm-project/vllm", file), "sglang": ("sgl-project/sglang", "python/" + file)}[engine]
        assert (match["repo"], match["path"]) == expected and match["tag"] == f"v{version}"
        assert match["first"] == line and int(match["last"] or line) >= int(line)
        seen.add(engine)
    assert seen == {"vllm", "sglang"}
    assert "https://github.com/sgl-project/sglang/blob/v0.5.23/python/sglang/srt/mem_cache/radix_cache.py#L" in html


def _only_code(tmp_path: Path) -> Path:
    """The walkthroughs with their lab and trace directives dropped: this build runs nothing."""
    target = _copy_walkthroughs(tmp_path)
    for page in target.glob("*.md"):
        page.write_text("\n".join(line for line in page.read_text().splitlines() if not line.startswith(("::: lab", "::: trace"))) + "\n")
    return target


def test_the_hash_vs_radix_lab_is_controlled(tmp_path):
    """Same order, same cap, no eviction: the radix tree at 16-token pages finds exactly what the
    hashed 16-token blocks find; a 1-token page adds the tail of matches that end mid-block."""
    result = run_lab("radix-vs-hash", {}, tmp_path)
    (table,) = result.tables
    rows = {(row[0], row[1], row[2]): row for row in table.rows}
    columns = table.columns
    differ, beyond, evicted, same = (columns.index(c) for c in (
        "requests whose hit differs from vLLM's", "tokens beyond vLLM's", "tokens evicted", "ours == upstream (per request)"))
    for (workload, cache, granularity), row in rows.items():
        assert row[evicted] == 0 and row[same] == "yes", row
        if granularity == "16 tokens":
            assert row[differ].startswith("0 of ") and row[beyond] == 0, row
    assert rows[("shared system prompts (100 tokens)", "SGLang RadixCache", "1 token")][beyond] == 84  # 4 tokens x 21 hits
    assert rows[("shared system prompts (96 tokens)", "SGLang RadixCache", "1 token")][beyond] == 0  # ends on a block boundary


def test_the_decode_latency_lab_reports_milliseconds_machine_and_load(tmp_path):
    """06 speaks of decode latency: its page carries a lab timed in milliseconds on our engine,
    saying on what CPU and under what load it ran, and the page ends with a tuning conclusion."""
    page = next(w for w in load_walkthroughs(WALKTHROUGHS_DIR) if w.slug == "06-chunked-prefill-lab")
    assert "chunked-prefill-ms" in [d.positional[0] for d in page.directives("lab")]
    result = run_lab("chunked-prefill-ms", {"budgets": "64", "long_prompt": "96", "decode_tokens": "4", "repeats": "1"}, tmp_path)
    (table,) = result.tables
    assert [row[:2] for row in table.rows] == [["off", 1024], ["on", 64]]
    timed = [i for i, column in enumerate(table.columns) if " ms" in column]
    assert len(timed) == 4
    for row in table.rows:
        for index in timed:
            median_ms, spread = row[index].split(" ", 1)
            assert float(median_ms) > 0 and spread.startswith("(") and spread.endswith(")")
    assert "load average (1 min)" in result.environment and "at the start" in result.environment
    assert result.environment.split(" (")[0]  # the CPU model from /proc/cpuinfo leads


def test_the_async_scheduling_lab_times_the_host_work_and_counts_the_late_endings(tmp_path):
    """10 says what async scheduling hides (the host phases of a step, in ms, machine and load
    stated) and what it makes late: a request ended by a stop token, a stop string or an abort is
    scheduled one step more than synchronously, with the same output; max_tokens costs nothing."""
    page = next(w for w in load_walkthroughs(WALKTHROUGHS_DIR) if w.slug == "10-async-scheduling")
    assert [d.positional[0] for d in page.directives("lab")] == ["async-scheduling"]
    assert {d.arg("recipe") for d in page.directives("trace")} == {"mini-async-scheduling", "vllm-async-scheduling"}
    result = run_lab("async-scheduling", {"batch": "2", "max_tokens": "6", "pairs": "1", "ending_at": "3"}, tmp_path)
    phases, effect, endings = result.tables
    shares = {row[0]: row for row in phases.rows}
    assert set(shares) == {"schedule", "prepare inputs", "forward + sample", "update + detokenize", "step"}
    assert float(shares["forward + sample"][1]) > float(shares["step"][1]) - float(shares["forward + sample"][1])
    assert [row[0] for row in effect.rows] == ["off", "on", "on / off"] and "ITL p50 ms" in effect.columns
    (tokens,) = {row[1] for row in endings.rows}  # each ending at the same token (the lab's 3rd or the first new one after)
    assert tokens >= 3
    assert {row[0]: (row[2], row[3], row[4]) for row in endings.rows} == {
        "max_tokens": (tokens, tokens, 0), "stop token": (tokens, tokens + 1, 1),
        "stop string": (tokens, tokens + 1, 1), "abort": (tokens, tokens + 1, 1)}
    assert "load average (1 min)" in result.environment and "at the start" in result.environment


def test_the_attention_walkthrough_reads_all_three_engines_and_the_interpreter(tmp_path):
    page = next(w for w in load_walkthroughs(WALKTHROUGHS_DIR) if w.slug == "09-paged-attention")
    engines = {d.arg("target").split(":", 1)[0] for d in page.directives("code") if d.arg("target")}
    assert engines == {"mini", "vllm", "sglang"}
    assert [d.positional[0] for d in page.directives("lab")] == ["attention-interpreter"]
    headings = [line for line in page.path.read_text().splitlines() if line.startswith("## ")]
    assert "## What the CPU interpreter can and cannot show" in headings and headings[-1] == "## Tuning conclusion"
    result = run_lab("attention-interpreter", {"decode_context": "37,70", "splits": "1,2"}, tmp_path)
    (table,) = result.tables
    assert [row[1] for row in table.rows] == ["1 split", "2 splits", "-", "-"]
    assert all(float(row[3]) < 1e-5 for row in table.rows)  # Triton (interpreted) == torch to float32 rounding


def test_every_lab_page_ends_with_a_tuning_conclusion():
    for walkthrough in load_walkthroughs(WALKTHROUGHS_DIR):
        if walkthrough.directives("lab"):
            headings = [line for line in walkthrough.path.read_text().splitlines() if line.startswith("## ")]
            assert headings[-1] == "## Tuning conclusion", walkthrough.name
