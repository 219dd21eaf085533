"""The validation's serving half (bench/whatif_validation.py reports on it): configs A and B, the
open-loop workload, and one traced run of it on the live vLLM CPU server or on ours, each started
on a quiet machine and stopped after its last response's spans are on disk."""
from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

from _server_meter import Contention, wait_until_quiet

from tracer.live.process import TRACING_ENV, ServerProcess, ServerSpec, free_port
from tracer.live.vllm import VllmOptions, vllm_server

REPO = Path(__file__).resolve().parents[1]

# Config A (the server flags every run shares, then A's own) and, per pair, B's flags and the --set
# whatif is given to predict B from A's trace. The flags are vLLM's and ours alike (`vllm serve` and
# `servetrace serve` name them the same); ours gets vLLM's CPU defaults for the rest written out
# (a 2048-token budget, as vLLM's CPU build sets it for max_model_len 2048).
BASE = dict(max_model_len=2048)
A = dict(max_num_seqs=8, extra_args=())
PAIRS = {
    "max_num_seqs": (dict(max_num_seqs=2, extra_args=()), {"max_num_seqs": 2}),
    "token_budget": (dict(max_num_seqs=8, extra_args=("--max-num-batched-tokens", "96")), {"max_num_batched_tokens": 96}),
    "prefix_caching": (dict(max_num_seqs=8, extra_args=("--no-enable-prefix-caching",)), {"enable_prefix_caching": False}),
}
# A budget of 96 moved our server's mean TTFT by 99% (bench/results/whatif_ours.md) but the live vLLM
# server's by 12% (its run of 22:06-22:12 at load 3-4.5; the issue asks for pairs that move it by 25%
# or more): vLLM's B takes 32, which whatif predicted from that run's A to move it by +110%.
TOKEN_BUDGET = {"ours": 96, "vllm": 32}


def pairs_for(source: str) -> dict:
    budget = TOKEN_BUDGET[source]
    return {**PAIRS, "token_budget": (dict(max_num_seqs=8, extra_args=("--max-num-batched-tokens", str(budget))),
                                      {"max_num_batched_tokens": budget})}


MAX_OTHERS_CORES = 0.1  # a run during which other processes took more of the 2 cores is served again

OURS_FLAGS = {"--no-enable-prefix-caching": "--no-prefix-caching"}  # the one flag ours spells differently
WORDS = "paged attention keeps keys and values in blocks so the scheduler can grow a sequence one block at a time".split()


def workload(num_requests: int, seed: int = 0) -> list[tuple[float, str, int]]:
    """(send time s, prompt text, max_tokens): Poisson arrivals, half on one shared system prompt."""
    rng = random.Random(seed)
    system = " ".join(rng.choice(WORDS) for _ in range(300))
    out, clock = [], 0.0
    for i in range(num_requests):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 260)))
        prompt = f"{system} Question {i}: {words}" if i % 2 == 0 else f"Note {i}: {words}"
        out.append((clock, prompt, 24))
        clock += rng.expovariate(1 / 0.35)
    return out


def ours_server(trace: Path, log_path: Path, flags: dict) -> ServerProcess:
    """`servetrace serve --trace TRACE` with A's or B's scheduler flags (bf16 where the CPU has it, as
    it serves by default)."""
    port = free_port()
    extra = [OURS_FLAGS.get(a, a) for a in flags["extra_args"]]
    if "--max-num-batched-tokens" not in extra:
        extra += ["--max-num-batched-tokens", "2048"]
    argv = [sys.executable, "-m", "tracer.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level",
            "warning", "--trace", str(trace), "--max-model-len", str(BASE["max_model_len"]),
            "--max-num-seqs", str(flags["max_num_seqs"]), *extra]
    return ServerProcess(ServerSpec(name="ours", argv=argv, host="127.0.0.1", port=port, log_path=log_path,
                                    unset_env=TRACING_ENV, cwd=REPO, startup_timeout_s=300))


def serve(folder: Path, label: str, flags: dict, requests: list[tuple[float, str, int]], reuse: bool = False,
          source: str = "vllm") -> tuple[Path, dict]:
    """The workload served under flags into folder/trace-LABEL.jsonl; and what the machine did around
    it: the seconds waited for it to go quiet before the first request, and the cores other
    processes took while the workload ran (_server_meter.Contention)."""
    import openai

    trace = folder / f"trace-{label}.jsonl"
    if reuse and trace.is_file():
        print(f"  {label}: reusing {trace}", flush=True)
        return trace, {}
    trace.unlink(missing_ok=True)
    if source == "ours":
        server_process = ours_server(trace, folder / f"server-{label}.log", flags)
    else:
        server_process = vllm_server(VllmOptions(trace_file=trace, log_path=folder / f"server-{label}.log",
                                                 max_num_seqs=flags["max_num_seqs"],
                                                 extra_args=tuple(flags["extra_args"]), **BASE))
    with server_process as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        client.completions.create(model=model, prompt="warm up", max_tokens=2)  # the first step's one-off cost
        # Each run starts on a quiet machine: the previous server's processes gone (vLLM's keep a
        # fifth of a core busy for seconds after their work, bench/_peers_offline.py), another
        # session's job over. A run that shares the cores anyway says by how much.
        waited = wait_until_quiet(server.pid)
        contention = Contention(server.pid)
        start = time.monotonic()

        def send(at: float, prompt: str, max_tokens: int) -> None:
            time.sleep(max(0.0, start + at - time.monotonic()))
            client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                      extra_body={"ignore_eos": True})

        threads = [threading.Thread(target=send, args=r) for r in requests]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        others = contention.others_cores()
        # The last responses' entrypoint spans end as they are sent; stopping the server at once lost
        # them in 5 of the 8 traces of our server's first validation run (the request's whole trace
        # then has no root and is not read: tracer/traces/shape.py). The span exporter writes every
        # 0.5 s (BatchSpanProcessor's schedule_delay_millis, tracer/instrument/otel.py): wait past it.
        time.sleep(1.5)
    print(f"  {label}: served {len(requests)} requests (waited {waited:.1f} s for a quiet machine; other processes "
          f"took {others:.2f} cores while it ran)", flush=True)
    return trace, {"quiet_wait_s": round(waited, 1), "others_cores": round(others, 2)}
