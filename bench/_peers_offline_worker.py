"""One offline engine, kept alive between measurements: bench/peers_bench.py starts it in a subprocess
(ours in .venv, vLLM's `LLM` class in .venv-vllm), sends it one JSON line per item on stdin and reads
one JSON line per result from --result-fd; the engine's own logging goes to stdout/stderr (a log file).

Both engines are driven by the same loop: at most `concurrency` requests in flight, a new one added
as one finishes, greedy, ignore_eos, each request producing exactly its max_tokens; the times at
which each request's first and last token came out of a step are recorded (batch-1 decode ms/step
is (last - first) / (tokens - 1) of a lone request). Stdlib only at the top: it runs in both venvs.

    python bench/_peers_offline_worker.py --engine ours|vllm --dtype D [--threads N] --result-fd 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class OursDriver:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        torch.set_num_threads(args.threads)
        sys.path.insert(0, str(REPO / "bench"))
        sys.path.insert(0, str(REPO))
        from engine.sampling_params import SamplingParams
        from serve_bench import build_offline_engine  # the engine `servetrace serve` builds from these options

        self.engine = build_offline_engine(engine_args(args))
        self.params = lambda n: SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        self.info = {"engine": "ours", "dtype": model_dtype(self.engine), "torch_threads": torch.get_num_threads(),
                     "torch": torch.__version__}

    def add(self, rid: str, ids: list[int], n: int) -> None:
        self.engine.add_request(rid, ids, self.params(n))

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished_requests()

    def step(self) -> list[tuple[str, int, bool]]:
        return [(o.request_id, len(o.new_token_ids), o.finished) for o in self.engine.step()]


class VllmDriver:
    def __init__(self, args: argparse.Namespace) -> None:
        import vllm
        from vllm import LLM, SamplingParams
        from vllm.sampling_params import RequestOutputKind

        llm = LLM(model=args.model, dtype=args.dtype, enforce_eager=args.enforce_eager, max_model_len=args.max_model_len,
                  max_num_seqs=args.max_num_seqs, seed=0, enable_prefix_caching=not args.no_prefix_caching)
        self.engine = llm.llm_engine
        self.llm = llm
        self.params = lambda n: SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True,
                                               output_kind=RequestOutputKind.DELTA)
        self.info = {"engine": "vllm", "dtype": args.dtype, "vllm": vllm.__version__,
                     "reserved_cpus_env": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU")}
        self.add("warmup", list(range(1000, 1016)), 4)
        while self.has_unfinished():
            self.step()

    def add(self, rid: str, ids: list[int], n: int) -> None:
        self.engine.add_request(rid, {"prompt_token_ids": ids}, self.params(n))

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished_requests()

    def step(self) -> list[tuple[str, int, bool]]:
        return [(o.request_id, len(o.outputs[0].token_ids), o.finished) for o in self.engine.step()]


def model_dtype(engine) -> str:
    """The dtype ours resolved (its default may differ by CPU), read off the loaded weights."""
    return str(next(engine.model_runner.model.parameters()).dtype).removeprefix("torch.")


def engine_args(args: argparse.Namespace) -> list[str]:
    """`servetrace serve` options for ours (the server in the serving part takes the same)."""
    out = ["--max-num-seqs", str(args.max_num_seqs), "--max-model-len", str(args.max_model_len),
           "--kv-cache-mb", str(args.kv_cache_mb)]
    out += ["--no-prefix-caching"] if args.no_prefix_caching else []
    return out + (["--dtype", args.dtype] if args.dtype != "default" else [])


def run_item(driver, item: dict, serial: int) -> dict:
    """Serve one item with at most `concurrency` in flight; per-request first/last token times."""
    pending = list(enumerate(zip(item["prompts"], item["max_tokens"])))[::-1]
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    count: dict[str, int] = {}
    in_flight = 0
    start = time.perf_counter()
    while pending or driver.has_unfinished():
        while pending and in_flight < item["concurrency"]:
            index, (ids, n) = pending.pop()
            driver.add(f"{serial}-{index}", ids, n)
            in_flight += 1
        outputs = driver.step()
        now = time.perf_counter() - start
        for rid, new, finished in outputs:
            if new:
                first.setdefault(rid, now)
                last[rid] = now
                count[rid] = count.get(rid, 0) + new
            in_flight -= finished
    elapsed = time.perf_counter() - start
    rids = sorted(count, key=lambda r: int(r.split("-")[1]))
    return {"elapsed_s": elapsed, "output_tokens": sum(count.values()),
            "tokens": [count[r] for r in rids], "first_s": [first[r] for r in rids], "last_s": [last[r] for r in rids]}


def exit_with_parent(parent: int) -> None:
    """If the bench dies mid-item, take this worker's process group (vLLM's EngineCore and Worker) with it."""
    while os.getppid() == parent:
        time.sleep(2)
    os.killpg(os.getpgrp(), 9)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["ours", "vllm"], required=True)
    parser.add_argument("--dtype", default="default")
    parser.add_argument("--threads", type=int, default=2, help="ours: torch threads")
    parser.add_argument("--model", default=str(REPO / ".models" / "smollm2-135m-instruct-hf"), help="vLLM: the HF folder")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--kv-cache-mb", type=int, default=1024, help="ours: the KV pool (vLLM: VLLM_CPU_KVCACHE_SPACE)")
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM: no torch.compile")
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument("--result-fd", type=int, required=True)
    args = parser.parse_args()
    results = os.fdopen(args.result_fd, "w", buffering=1)
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
    # Built in the main thread; every item is stepped in another thread, as `servetrace serve` steps
    # ours (bench/serve_bench.py offline_level says why that matters on this oversubscribed CPU).
    driver = (OursDriver if args.engine == "ours" else VllmDriver)(args)
    results.write(json.dumps({"ready": True, "info": driver.info}) + "\n")
    for serial, line in enumerate(sys.stdin):
        message = json.loads(line)
        if message.get("quit"):
            break
        box: list = []
        worker = threading.Thread(target=lambda: box.append(run_item(driver, message, serial)))
        worker.start()
        worker.join()
        results.write(json.dumps(box[0] if box else {"error": "the item failed (see the worker log)"}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
