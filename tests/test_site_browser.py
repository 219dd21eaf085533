"""The built site in headless Chromium: every walkthrough renders its code panes, timelines and
lab tables, the engine tabs work, internal links resolve, and no page logs a console error.

Chromium is driven over the DevTools protocol (aiohttp's websocket client) so console errors,
uncaught exceptions and failed loads are seen, not guessed from a DOM dump. The site is built
once into a temporary directory; labs and trace recordings come from the shared result cache
(build/cache), so only the first run after an engine or replay change pays for them.
"""
from __future__ import annotations

import asyncio
import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

from engine.omp_env import use_passive_omp_wait  # noqa: E402

use_passive_omp_wait()  # before torch loads

from tracer.commands.site import LabExperiments  # noqa: E402
from tracer.sitebuilder.builder import WALKTHROUGHS_DIR, BuildOptions, build_site  # noqa: E402
from tracer.walkthroughs.directives import load_walkthroughs  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian `chromium` is not installed (scripts/setup-system.sh installs it; `apt-get install -y chromium`)")

PAGE_PROBE = """JSON.stringify({
  ready: document.documentElement.dataset.servetrace || null,
  panes: [...document.querySelectorAll('.st-pane')].map(p => ({engine: p.dataset.engine,
          lines: p.querySelectorAll('.linenos').length, where: p.querySelector('.st-where')?.textContent,
          label: p.querySelector('.st-engine')?.textContent, source: p.querySelector('a.st-source-link')?.href || null})),
  anchors: document.querySelectorAll('.st-anchor').length,
  timelines: [...document.querySelectorAll('figure.st-timeline')].map(f => ({
          bars: f.querySelectorAll('svg rect.st-span').length,
          width: f.querySelector('svg').getBoundingClientRect().width,
          height: f.querySelector('svg').getBoundingClientRect().height,
          lanes: Number(f.querySelector('svg').dataset.lanes),
          label_px: Math.min(...[...f.querySelectorAll('svg .st-lane-label')].map(t => t.getBoundingClientRect().height)),
          bar_px: Math.min(...[...f.querySelectorAll('svg rect.st-span')].map(r => r.getBoundingClientRect().height))})),
  labs: [...document.querySelectorAll('.st-lab')].map(l => ({rows: l.querySelectorAll('tbody tr').length,
          command: l.querySelector('.st-command code')?.textContent})),
  notes: document.querySelectorAll('.st-notes .st-note').length,
  links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
})"""


# -- a small DevTools-protocol client ------------------------------------------------------


class Browser:
    def __init__(self, profile: Path) -> None:
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        self.endpoint = f"ws://127.0.0.1:{port}{path}"

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def visit(self, url: str) -> tuple[dict, list[str]]:
        """(the page probe's result, console errors / exceptions / failed loads) for one page."""
        return asyncio.run(self._visit(url))

    async def _visit(self, url: str) -> tuple[dict, list[str]]:
        import aiohttp

        errors: list[str] = []
        async with aiohttp.ClientSession() as session, session.ws_connect(self.endpoint, max_msg_size=0) as ws:
            ids = iter(range(1, 1_000_000))
            pending: dict[int, asyncio.Future] = {}
            loaded = asyncio.Event()

            async def reader() -> None:
                async for message in ws:
                    data = json.loads(message.data)
                    if "id" in data and data["id"] in pending:
                        pending.pop(data["id"]).set_result(data)
                        continue
                    method, params = data.get("method"), data.get("params", {})
                    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                        errors.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
                    elif method == "Runtime.exceptionThrown":
                        details = params.get("exceptionDetails", {})
                        errors.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
                    elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                        entry = params["entry"]
                        errors.append(f"log: {entry.get('text')} {entry.get('url', '')}")
                    elif method == "Page.loadEventFired":
                        loaded.set()

            async def call(method: str, params: dict | None = None, session_id: str | None = None) -> dict:
                message_id = next(ids)
                future = asyncio.get_running_loop().create_future()
                pending[message_id] = future
                payload = {"id": message_id, "method": method, "params": params or {}}
                if session_id:
                    payload["sessionId"] = session_id
                await ws.send_str(json.dumps(payload))
                result = await asyncio.wait_for(future, 30)
                if "error" in result:
                    raise RuntimeError(f"{method}: {result['error']}")
                return result.get("result", {})

            task = asyncio.create_task(reader())
            target = await call("Target.createTarget", {"url": "about:blank"})
            attached = await call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
            sid = attached["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                await call(f"{domain}.enable", session_id=sid)
            await call("Page.navigate", {"url": url}, sid)
            await asyncio.wait_for(loaded.wait(), 30)
            await asyncio.sleep(0.3)  # late console messages and the tab script
            probe = await call("Runtime.evaluate", {"expression": PAGE_PROBE, "returnByValue": True}, sid)
            await call("Target.closeTarget", {"targetId": target["targetId"]})
            task.cancel()
        return json.loads(probe["result"]["value"]), errors

    def click_second_tab(self, url: str) -> bool:
        return asyncio.run(self._click(url))

    async def _click(self, url: str) -> bool:
        script = """(() => { const anchor = [...document.querySelectorAll('.st-anchor')].find(a => a.querySelectorAll('.st-tab').length > 1);
          anchor.querySelectorAll('.st-tab')[1].click();
          const active = anchor.querySelectorAll('.st-pane.st-active');
          return active.length === 1 && active[0].dataset.pane === '1' && getComputedStyle(anchor.querySelectorAll('.st-pane')[0]).display === 'none'; })()"""
        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(self.endpoint, max_msg_size=0) as ws:
            counter = iter(range(1, 1000))

            async def call(method, params=None, sid=None):
                message_id = next(counter)
                payload = {"id": message_id, "method": method, "params": params or {}}
                if sid:
                    payload["sessionId"] = sid
                await ws.send_str(json.dumps(payload))
                async for message in ws:
                    data = json.loads(message.data)
                    if data.get("id") == message_id:
                        return data.get("result", {})

            target = await call("Target.createTarget", {"url": url})
            sid = (await call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}))["sessionId"]
            for _ in range(100):
                state = await call("Runtime.evaluate", {"expression": "document.documentElement.dataset.servetrace || ''", "returnByValue": True}, sid)
                if state["result"].get("value") == "ready":
                    break
                await asyncio.sleep(0.1)
            result = await call("Runtime.evaluate", {"expression": script, "returnByValue": True}, sid)
            await call("Target.closeTarget", {"targetId": target["targetId"]})
        return bool(result["result"].get("value"))


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    report = build_site(BuildOptions(out=out, experiments=LabExperiments()))
    assert report.site_dir is not None
    return report.site_dir


@pytest.fixture(scope="module")
def server(built_site):
    handler = functools.partial(_QuietHandler, directory=str(built_site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    instance = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def visited(server, browser) -> dict[str, tuple[dict, list[str]]]:
    pages = [w.path.with_suffix(".html").name for w in load_walkthroughs(WALKTHROUGHS_DIR)] + ["index.html", "hops.html"]
    return {page: browser.visit(server + page) for page in pages}


# -- the specification ---------------------------------------------------------------------


def test_the_console_watcher_sees_planted_errors(tmp_path, browser):
    """The no-console-errors checks below can fail: a page with errors is caught."""
    (tmp_path / "bad.html").write_text(
        "<html><body><script>console.error('planted error'); setTimeout(() => { throw new Error('planted throw') }, 0);"
        "</script><img src='missing.png'></body></html>")
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        _, errors = browser.visit(f"http://127.0.0.1:{httpd.server_address[1]}/bad.html")
    finally:
        httpd.shutdown()
    text = "\n".join(errors)
    assert "planted error" in text and "planted throw" in text and "404" in text


def test_every_walkthrough_renders_code_panes_notes_timelines_and_labs(visited):
    for walkthrough in load_walkthroughs(WALKTHROUGHS_DIR):
        probe, _ = visited[walkthrough.path.with_suffix(".html").name]
        assert probe["ready"] == "ready", f"{walkthrough.name}: the page script did not run"
        assert probe["anchors"] == len(walkthrough.directives("code")), walkthrough.name
        assert len(probe["panes"]) >= probe["anchors"]
        for pane in probe["panes"]:
            assert pane["lines"] > 0 and pane["engine"] in ("mini", "vllm", "sglang"), (walkthrough.name, pane)
            assert pane["where"].split(":")[0].endswith(".py") and pane["where"].split(":")[1].isdigit()
        assert len(probe["timelines"]) == len(walkthrough.directives("trace")), walkthrough.name
        for timeline in probe["timelines"]:
            assert timeline["bars"] > 0 and timeline["width"] > 300, (walkthrough.name, timeline)
        assert len(probe["labs"]) == len(walkthrough.directives("lab")), walkthrough.name
        for lab in probe["labs"]:
            assert lab["rows"] > 0 and lab["command"].startswith("servetrace site lab ")


def test_upstream_panes_show_vllm_and_sglang_source_with_versions(visited):
    panes = [pane for probe, _ in visited.values() for pane in probe["panes"]]
    engines = {pane["engine"] for pane in panes}
    assert engines == {"mini", "vllm", "sglang"}
    assert any(p["where"].startswith("vllm/v1/core/") for p in panes)
    assert any(p["where"].startswith("sglang/srt/mem_cache/radix_cache.py") for p in panes)
    assert any(p["where"].startswith("engine/") for p in panes)


def test_no_page_logs_a_console_error(visited):
    failures = {page: errors for page, (_, errors) in visited.items() if errors}
    assert failures == {}


def test_internal_links_resolve(visited, server):
    ids_by_page = {page: set(probe["ids"]) for page, (probe, _) in visited.items()}
    checked = 0
    for page, (probe, _) in visited.items():
        for href in set(probe["links"]):
            parsed = urllib.parse.urlparse(href)
            if parsed.scheme or href.startswith(("mailto:", "//")):
                continue
            target = urllib.parse.urljoin(server + page, href)
            path = urllib.parse.urlparse(target).path.lstrip("/") or "index.html"
            if parsed.path:
                try:
                    with urllib.request.urlopen(target.split("#")[0]) as response:
                        assert response.status == 200
                except urllib.error.HTTPError as exc:
                    pytest.fail(f"{page}: link {href!r} -> HTTP {exc.code}")
            fragment = parsed.fragment
            if fragment and path in ids_by_page:
                assert fragment in ids_by_page[path], f"{page}: link {href!r}: no element #{fragment} in {path}"
            checked += 1
    assert checked > 50


def test_engine_tabs_switch_panes(browser, server):
    assert browser.click_second_tab(server + "04-prefix-caching-hash-vs-radix.html")


def test_the_hop_catalog_page_carries_the_per_hop_notes(visited):
    probe, _ = visited["hops.html"]
    assert {"hop-kv-allocate", "hop-kv-match_prefix", "hop-scheduler-preempt"} <= set(probe["ids"])
    assert any(link.endswith("07-preemption.html") for link in probe["links"])


def test_timelines_are_tall_with_readable_labels(visited):
    """Timelines were ~60 px tall with 8 px labels: each lane now gets room and its label reads."""
    timelines = [t for probe, _ in visited.values() for t in probe["timelines"]]
    assert timelines
    for timeline in timelines:
        assert timeline["height"] >= 120, timeline  # twice the old ~60 px, for the smallest (3-lane) trace
        assert timeline["height"] / timeline["lanes"] >= 24, timeline  # a lane of one row is >= 24 px with its gap
        assert timeline["label_px"] >= 12, timeline  # the rendered text box of the smallest lane label
        assert timeline["bar_px"] >= 14, timeline


UPSTREAM_SOURCE = {"vllm": ("https://github.com/vllm-project/vllm/blob/v{version}/", ""),
                   "sglang": ("https://github.com/sgl-project/sglang/blob/v{version}/", "python/")}


def test_upstream_panes_link_to_the_pinned_release_at_file_and_line(visited):
    checked = 0
    for page, (probe, _) in visited.items():
        for pane in probe["panes"]:
            if pane["engine"] == "mini":
                assert pane["source"] is None, (page, pane)
                continue
            version = pane["label"].split()[-1]
            base, root = UPSTREAM_SOURCE[pane["engine"]]
            file, line = pane["where"].split(":")
            prefix = base.format(version=version) + root + file + "#L" + line
            assert pane["source"] and (pane["source"] == prefix or pane["source"].startswith(prefix + "-L")), (page, pane)
            checked += 1
    assert checked >= 20


def test_the_attention_walkthrough_is_in_the_nav(visited):
    for page in ("index.html", "01-request-lifecycle.html"):
        assert any(link.endswith("09-paged-attention.html") for link in visited[page][0]["links"]), page
    probe, errors = visited["09-paged-attention.html"]
    assert not errors and {pane["engine"] for pane in probe["panes"]} == {"mini", "vllm", "sglang"}
