"""Every traced run owns its SERVETRACE_TRACE file: a server's first process (the plugin loaded
with no owner in its environment) empties it, and the processes it starts append to it, as vLLM's
EngineCore / Workers and SGLang's scheduler / detokenizer do. A second run of the same process
tree does not keep the first run's spans."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A server in miniature: the plugin loads in the first process, which then starts an engine process
# the way vLLM starts its EngineCore (multiprocessing, spawn: a fresh interpreter that inherits the
# environment), and the plugin loads there too. Each process writes one span naming the run.
TREE = textwrap.dedent("""
    import multiprocessing, sys
    from tracer.instrument import otel, plugins

    def span(run, role):
        plugins._install("mini")
        otel.active_tracer().start_span("engine.enqueue", attributes={"gen_ai.request.id": f"{run}-{role}"}).end()
        otel.shutdown()

    def engine_core(run):
        span(run, "engine_core")

    if __name__ == "__main__":
        run = sys.argv[1]
        plugins._install("mini")
        otel.active_tracer().start_span("http.request", attributes={"gen_ai.request.id": f"{run}-api_server"}).end()
        otel.flush()  # on disk before the engine process starts, as a server's spans are while it runs
        child = multiprocessing.get_context("spawn").Process(target=engine_core, args=(run,))
        child.start()
        child.join()
        assert child.exitcode == 0
        otel.shutdown()
""")


def run_tree(tmp_path: Path, trace: Path, run: str, extra_env: dict[str, str] | None = None) -> None:
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    env = {"SERVETRACE_TRACE": str(trace), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(extra_env or {})}
    subprocess.run([sys.executable, str(script), run], check=True, env=env, cwd=ROOT, timeout=120)


def request_ids(trace: Path) -> list[str]:
    return sorted(attribute["value"]["stringValue"]
                  for line in trace.read_text().splitlines() for rs in json.loads(line)["resourceSpans"]
                  for ss in rs["scopeSpans"] for span in ss["spans"] for attribute in span["attributes"]
                  if attribute["key"] == "gen_ai.request.id")


def test_a_second_run_replaces_the_first_runs_spans(tmp_path):
    trace = tmp_path / "trace.jsonl"
    run_tree(tmp_path, trace, "first")
    assert request_ids(trace) == ["first-api_server", "first-engine_core"]  # both processes, one file
    run_tree(tmp_path, trace, "second")
    assert request_ids(trace) == ["second-api_server", "second-engine_core"]


def test_an_owner_left_in_the_launching_shell_does_not_make_a_run_append(tmp_path):
    """A shell that kept SERVETRACE_TRACE_OWNER from an earlier server (a pid that is no ancestor
    of this run) does not own this run's file."""
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"resourceSpans": []}\n')
    run_tree(tmp_path, trace, "only", {"SERVETRACE_TRACE_OWNER": f"999999999:{trace}"})
    assert request_ids(trace) == ["only-api_server", "only-engine_core"]
    assert len(trace.read_text().splitlines()) == 2
