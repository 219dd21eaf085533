"""The CLI as a new user meets it (issue 16): every command owns its output folder, upstream
warnings are counted in one line, a bad flag shows its own subcommand's usage, piped output
does not wrap, a generated workload carries the replay config its shape needs."""
from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import warnings

import pytest

from tracer.cli import main as servetrace
from tracer.replay.output_dir import MANIFEST_NAME
from tracer.replay.workload import WorkloadRequest, looks_like_workload, save_workload


def servetrace_process(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def workload(tmp_path) -> str:
    path = tmp_path / "w.jsonl"
    assert servetrace(["workload", "gen", "shared-prefix", "-n", "6", "--out", str(path)]) == 0
    return str(path)


# -- replay owns --out -------------------------------------------------------------------


def test_a_second_replay_replaces_the_first_instead_of_doubling_its_spans(tmp_path, workload, capsys):
    pytest.importorskip("vllm")
    from tracer.traces.trace_file import read_trace_file

    out = tmp_path / "out"
    for _ in range(2):
        assert servetrace(["replay", workload, "--engines", "mini,vllm", "--out", str(out)]) == 0
    steps = json.loads((out / "steps-mini.json").read_text())["num_steps"]
    assert len(read_trace_file(out / "trace-mini.jsonl").named("scheduler.schedule")) == steps
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert sorted(manifest["files"]) == sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME)


def test_files_of_engines_not_in_this_run_go_and_nothing_else_does(tmp_path, workload):
    pytest.importorskip("vllm")
    out = tmp_path / "out"
    assert servetrace(["replay", workload, "--engines", "mini,vllm", "--out", str(out)]) == 0
    (out / "my-notes.txt").write_text("mine")
    assert servetrace(["replay", workload, "--engines", "mini", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert "trace-vllm.jsonl" not in names and "steps-vllm.json" not in names
    assert {"trace-mini.jsonl", "steps-mini.json", "compare.json", "my-notes.txt"} <= names
    assert json.loads((out / "compare.json").read_text())["engines"] == ["mini"]


def test_a_folder_replay_did_not_write_is_refused_unless_forced(tmp_path, workload, capsys):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "trace-mini.jsonl").write_text("somebody else's\n")
    (out / "keep.txt").write_text("keep")
    assert servetrace(["replay", workload, "--engines", "mini", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--force" in err and "Traceback" not in err
    assert (out / "trace-mini.jsonl").read_text() == "somebody else's\n"
    assert servetrace(["replay", workload, "--engines", "mini", "--out", str(out), "--force"]) == 0
    assert "somebody else's" not in (out / "trace-mini.jsonl").read_text()  # replaced, not appended to
    assert (out / "keep.txt").read_text() == "keep"


def test_demo_run_twice_records_one_run(tmp_path):
    """make demo's folder, twice: one chat request and one replay's spans, not two."""
    from tracer.traces.trace_file import read_trace_file

    out = tmp_path / "demo"
    for _ in range(2):
        result = servetrace_process("demo", "--out", str(out), "--max-tokens", "4", timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    roots = read_trace_file(out / "trace-http.jsonl").named("http.request")
    assert len(roots) == 1
    steps = json.loads((out / "replay" / "steps-vllm.json").read_text())["num_steps"]
    assert len(read_trace_file(out / "replay" / "trace-vllm.jsonl").named("scheduler.schedule")) == steps
    # Its own warnings-free stderr: upstream's are one counted line.
    assert "AWQ" not in result.stderr and "upstream warning" in result.stderr


# -- upstream warnings ---------------------------------------------------------------------


def test_upstream_warnings_are_one_line_and_verbose_shows_them(tmp_path, workload):
    pytest.importorskip("sglang")
    quiet = servetrace_process("replay", workload, "--out", str(tmp_path / "a"))
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "AWQ" not in quiet.stderr and "vllm._C" not in quiet.stderr and "deprecated" not in quiet.stderr
    assert "upstream warnings hidden; --verbose shows them" in quiet.stderr
    loud = servetrace_process("replay", workload, "--out", str(tmp_path / "b"), "--verbose")
    assert loud.returncode == 0
    assert "AWQ" in loud.stderr and "hidden" not in loud.stderr


def test_servetraces_own_warnings_and_upstream_errors_are_never_hidden(caplog, recwarn):
    import tracer
    from tracer.commands._upstream_noise import UpstreamNoise

    ours_file = str(tracer.__file__)
    noise = UpstreamNoise().install()
    try:
        logging.getLogger("tracer.replay.session").warning("ours: shown")
        logging.getLogger("servetrace").warning("the plugin: shown")
        logging.getLogger("vllm.config.vllm").warning("theirs: hidden")
        logging.getLogger("created.after.install.x").warning("theirs too: hidden")
        logging.getLogger("sglang.srt").error("an upstream error: shown")
        warnings.warn_explicit("upstream warning", UserWarning, "/site-packages/sglang/awq.py", 53)
        warnings.warn_explicit("our warning", UserWarning, ours_file, 1)
    finally:
        noise.uninstall()
    seen = [r.getMessage() for r in caplog.records]
    assert seen == ["ours: shown", "the plugin: shown", "an upstream error: shown"]
    assert [str(w.message) for w in recwarn] == ["our warning"]
    assert noise.hidden == 3 and noise.summary() == "3 upstream warnings hidden; --verbose shows them"
    caplog.clear()
    logging.getLogger("vllm.config.vllm").warning("after uninstall: shown")
    assert [r.getMessage() for r in caplog.records] == ["after uninstall: shown"]


# -- flags, pipes, ports -------------------------------------------------------------------


@pytest.mark.parametrize("argv, usage", [
    (["check", "-v"], "usage: servetrace check"),
    (["hops", "--bogus"], "usage: servetrace hops"),
    (["workload", "gen", "mixed", "--out", "x.jsonl", "--bogus"], "usage: servetrace workload gen"),
])
def test_a_bad_flag_prints_its_subcommands_usage(argv, usage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        servetrace(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and "unrecognized arguments: " + argv[-1] in err


def test_piped_hops_output_keeps_each_row_on_one_line():
    result = servetrace_process("hops", "--engine", "vllm")  # stdout is a pipe here
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    qualname = "OpenAIServingCompletion.create_completion"
    assert any(qualname in line and "serving.py:" in line for line in lines)  # one row, unsplit
    assert "--json" in result.stderr


def test_serve_names_the_busy_port_before_importing_torch():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = ("import sys; from tracer.cli import main; rc = main(['serve', '--port', '%d']); "
                "print('torch' in sys.modules); sys.exit(rc)" % port)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"port {port} is busy" in result.stderr and "loading model" not in result.stderr
    assert result.stdout.strip() == "False"


def test_the_port_helper_site_serve_uses_refuses_a_busy_port():
    from tracer.commands._ports import PortError, ensure_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(PortError, match=f"port {taken.getsockname()[1]} is busy"):
            ensure_free("127.0.0.1", taken.getsockname()[1])
    ensure_free("127.0.0.1", 0)


# -- workload sidecar, workload detection --------------------------------------------------


def test_memory_pressure_carries_a_config_that_preempts(tmp_path, capsys):
    path = tmp_path / "mp.jsonl"
    assert servetrace(["workload", "gen", "memory-pressure", "--out", str(path)]) == 0
    sidecar = tmp_path / "mp.config.json"
    assert json.loads(sidecar.read_text())["num_blocks"] < 64
    capsys.readouterr()
    assert servetrace(["replay", str(path), "--engines", "mini", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert f"config from {sidecar}" in out and "never filled" not in out
    steps = json.loads((tmp_path / "o" / "steps-mini.json").read_text())["steps"]
    assert sum(len(s["preempted"]) for s in steps) > 0


def test_replay_says_when_the_pool_never_filled(tmp_path, capsys):
    path = tmp_path / "mp.jsonl"
    assert servetrace(["workload", "gen", "memory-pressure", "--out", str(path)]) == 0
    assert servetrace(["replay", str(path), "--engines", "mini", "--num-blocks", "512", "--out", str(tmp_path / "o")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "the KV pool never filled" in out and "of 511 blocks in use" in out


def test_a_shape_without_a_config_leaves_no_stale_sidecar(tmp_path):
    path = tmp_path / "w.jsonl"
    assert servetrace(["workload", "gen", "memory-pressure", "--out", str(path)]) == 0
    assert servetrace(["workload", "gen", "bursts", "--out", str(path)]) == 0
    assert not (tmp_path / "w.config.json").exists()


def test_a_workload_is_told_apart_from_a_trace(tmp_path):
    from tracer.traces.trace_file import read_trace_file  # noqa: F401 (the format a trace has)

    workload = save_workload([WorkloadRequest("a", 0, [1, 2], 2)], tmp_path / "w.jsonl")
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({"resourceSpans": []}) + "\n")
    (tmp_path / "bad.jsonl").write_text("not json\n")
    assert looks_like_workload(workload)
    assert not looks_like_workload(trace) and not looks_like_workload(tmp_path / "bad.jsonl")
    assert not looks_like_workload(tmp_path / "missing.jsonl")


def test_the_readme_says_what_the_bundled_model_is_and_how_to_serve_another():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert readme.startswith("# servetrace\n\n```\nmake demo\nmake test\n```")
    text = " ".join(readme.split())
    assert "SmolLM2-135M-Instruct" in text and "4-bit GGUF (Q4_1" in text and "often wrong" in text
    assert "servetrace serve --model" in text and "--api-key" in text
