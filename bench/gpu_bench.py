"""GPU benchmark (issue 8): our engine vs transformers generate() vs transformers' StaticCache step in a CUDA graph.

One card, one run: SmolLM2-135M's shape with random weights in bfloat16 (the model file is too big
to carry to the device), 1 / 64 / 256 concurrent requests of 128 prompt and 128 output tokens,
all submitted at once, greedy. Before timing, greedy tokens of our engine are compared with
transformers generate() on the card, in float32 and in bfloat16. The table gives end-to-end
output tokens/s, the steady-state decode step, and the memory-bandwidth floor of that step
(weights + the KV cache read per step, over the device-to-device copy bandwidth measured in the
same run).

    python bench/gpu_bench.py                          # on a CUDA machine: bench/results/gpu.json + gpu.md
    python bench/gpu_bench.py --results-dir "$OUT"     # through the device tool, see bench/README.md
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402

import gpu_runners as runners  # noqa: E402

TARGET_TOKENS_PER_S_AT_256 = 50_000
TARGET_BATCH1_STEP_MS = 1.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="1,64,256", help="concurrent requests per case (comma-separated)")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--check-requests", type=int, default=8, help="requests in the greedy-token check")
    parser.add_argument("--no-eager", action="store_true", help="skip our engine without CUDA graphs")
    parser.add_argument("--profile", action="store_true", help="also write a kernel profile of our decode steps")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "bench/gpu_bench.py measures the engine on a CUDA GPU and there is none here; nothing was measured or "
            "written. Run it on a GPU machine (see bench/README.md, 'GPU benchmark').",
            file=sys.stderr,
        )
        return 2
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 check means float32 on both sides

    result: dict = {"command": "python bench/gpu_bench.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
                    "environment": environment(), "config": runners.SMOLLM2_135M | {"init_std": runners.INIT_STD},
                    "prompt_len": args.prompt_len, "output_len": args.output_len}
    result["copy_bandwidth_bytes_per_s"] = bandwidth = copy_bandwidth(device)
    print(f"{result['environment']['device']}: device-to-device copy {bandwidth / 1e12:.2f} TB/s")

    hf_model, ours, ours_config = runners.build_models(runners.SMOLLM2_135M, device)
    check_prompts = runners.random_prompts(args.check_requests, args.prompt_len, ours_config.vocab_size, seed=1)
    result["correctness"] = {"float32": check_greedy(hf_model, ours, ours_config, check_prompts, args.output_len)}
    runners.to_dtype_keeping_rope_in_float32(hf_model, torch.bfloat16)
    runners.to_dtype_keeping_rope_in_float32(ours, torch.bfloat16)
    result["correctness"]["bfloat16"] = check_greedy(hf_model, ours, ours_config, check_prompts, args.output_len)
    for dtype, check in result["correctness"].items():
        print(f"greedy tokens vs transformers generate(), {dtype}: {check['summary']}")

    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())  # tied lm_head counted once, read once
    cases = []
    for batch in batch_sizes:
        prompts = runners.random_prompts(batch, args.prompt_len, ours_config.vocab_size, seed=batch)
        floor = decode_floor(ours_config, batch, args.prompt_len, args.output_len, weight_bytes, bandwidth)
        for name, run in run_case(hf_model, ours, ours_config, prompts, args.output_len, not args.no_eager):
            case = summarize(name, batch, run, args.output_len, floor)
            cases.append(case)
            print(format_row(case))
        torch.cuda.empty_cache()
    result["cases"] = cases
    result["targets"] = check_targets(cases)
    if args.profile:
        result["profile_file"] = str(write_profile(ours, ours_config, batch_sizes, args, device))

    print()
    print(markdown_table(cases))
    for line in result["targets"]["lines"]:
        print(line)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.results_dir / "gpu.md").write_text(markdown_report(result))
    print(f"wrote {args.results_dir / 'gpu.json'} and {args.results_dir / 'gpu.md'}")
    return 0


# ---------------------------------------------------------------- measurements


def environment() -> dict:
    import transformers
    import triton

    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def copy_bandwidth(device: torch.device, num_bytes: int = 1 << 30, repeats: int = 20) -> float:
    """Device-to-device copy, bytes read + written per second, best of `repeats`."""
    src = torch.empty(num_bytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    del src, dst
    return 2 * num_bytes / best


def check_greedy(hf_model, ours, ours_config, prompts: torch.Tensor, output_len: int) -> dict:
    """Our engine's greedy tokens vs transformers generate(); at a divergence, transformers' own margin there."""
    reference = runners.hf_generate(hf_model, prompts, output_len, return_scores=True)
    core = runners.EngineCore(ours, ours_config, prompts.shape[0], prompts.shape[1] + output_len, cuda_graphs=True)
    candidate = core.generate(prompts, output_len)
    divergences = []
    for request, (expected, got) in enumerate(zip(reference.tokens, candidate.tokens)):
        step = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), None)
        if step is not None:
            logits = reference.scores[step, request]
            # How far apart transformers itself put the two tokens: a near-tie is rounding, not a bug.
            margin = (logits[expected[step]] - logits[got[step]]).item()
            divergences.append({"request": request, "step": step, "hf_logit_margin": margin})
    identical = len(prompts) - len(divergences)
    summary = f"{identical}/{len(prompts)} requests identical for all {output_len} tokens"
    if divergences:
        summary += "; first divergences (step, transformers' logit margin): " + ", ".join(
            f"({d['step']}, {d['hf_logit_margin']:.2g})" for d in divergences
        )
    return {"requests": len(prompts), "identical": identical, "divergences": divergences, "summary": summary}


def run_case(hf_model, ours, ours_config, prompts: torch.Tensor, output_len: int, with_eager: bool):
    """(engine name, Run) for every engine on one batch; each warmed up on the same batch first."""
    batch = prompts.shape[0]
    max_model_len = prompts.shape[1] + output_len
    variants = [("ours (triton + CUDA graphs)", True)] + ([("ours (triton, eager)", False)] if with_eager else [])
    for name, graphs in variants:
        core = runners.EngineCore(ours, ours_config, batch, max_model_len, cuda_graphs=graphs)
        core.generate(prompts, output_len)  # compiles the kernels, captures the graphs, warms every width
        yield name, core.generate(prompts, output_len)
        del core
    runners.hf_generate(hf_model, prompts, 2)
    yield "transformers generate()", runners.hf_generate(hf_model, prompts, output_len)
    yield "transformers StaticCache + CUDA graph", runners.hf_static_cuda_graph(hf_model, prompts, output_len)


def decode_floor(config, batch: int, prompt_len: int, output_len: int, weight_bytes: int, bandwidth: float) -> dict:
    """Least time a decode step can take: every weight and the batch's KV cache read once, at copy bandwidth."""
    mean_context = prompt_len + output_len / 2
    kv_bytes = int(batch * mean_context * config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * 2)
    step_s = (weight_bytes + kv_bytes) / bandwidth
    return {"weight_bytes": weight_bytes, "kv_bytes_per_step": kv_bytes, "step_ms": 1e3 * step_s,
            "decode_tokens_per_s": batch / step_s}


def summarize(name: str, batch: int, run: runners.Run, output_len: int, floor: dict) -> dict:
    case = {"engine": name, "batch": batch, "total_s": run.total_s, "tokens_per_s": batch * output_len / run.total_s,
            "floor": floor}
    if run.decode_step_s:
        case["decode_step_ms_median"] = 1e3 * statistics.median(run.decode_step_s)
        case["decode_step_ms_mean"] = 1e3 * statistics.fmean(run.decode_step_s)
        case["decode_steps"] = len(run.decode_step_s)
    else:  # generate() gives no per-step times: its mean per output token, prefill included
        case["ms_per_output_token"] = 1e3 * run.total_s / output_len
    step_ms = case.get("decode_step_ms_median", case.get("ms_per_output_token"))
    case["x_floor"] = step_ms / floor["step_ms"]
    if run.phase_s:
        case["decode_phase_ms_mean"] = {k: 1e3 * statistics.fmean(v) for k, v in run.phase_s.items() if v}
    return case


def check_targets(cases: list[dict]) -> dict:
    ours = {c["batch"]: c for c in cases if c["engine"] == "ours (triton + CUDA graphs)"}
    lines, met = [], {}
    if 256 in ours:
        value = ours[256]["tokens_per_s"]
        met["tokens_per_s_at_256"] = value >= TARGET_TOKENS_PER_S_AT_256
        lines.append(f"target >= {TARGET_TOKENS_PER_S_AT_256:,} output tokens/s at 256 requests: {value:,.0f} "
                     f"({'met' if met['tokens_per_s_at_256'] else 'NOT met'})")
    if 1 in ours:
        value = ours[1]["decode_step_ms_median"]
        met["batch1_step_ms"] = value <= TARGET_BATCH1_STEP_MS
        lines.append(f"target <= {TARGET_BATCH1_STEP_MS} ms per batch-1 decode step: {value:.2f} ms "
                     f"({'met' if met['batch1_step_ms'] else 'NOT met'})")
    return {"met": met, "lines": lines}


def write_profile(ours, ours_config, batch_sizes: list[int], args, device: torch.device) -> Path:
    """Kernel time of 16 decode steps of our engine, eager and graphed, at the smallest and largest batch."""
    from torch.profiler import ProfilerActivity, profile

    out = args.results_dir / "gpu_profile.txt"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for batch in sorted({min(batch_sizes), max(batch_sizes)}):
        prompts = runners.random_prompts(batch, args.prompt_len, ours_config.vocab_size, seed=batch)
        for graphs in (False, True):
            core = runners.EngineCore(ours, ours_config, batch, args.prompt_len + 16, cuda_graphs=graphs)
            core.generate(prompts, 4)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                core.generate(prompts, 16)
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
            sections.append(f"## batch {batch}, {'CUDA graphs' if graphs else 'eager'} (prefill + 15 decode steps)\n{table}")
            del core
    out.write_text("\n\n".join(sections) + "\n")
    return out


# ---------------------------------------------------------------- report


COLUMNS = ["batch", "engine", "output tok/s", "decode step ms", "floor ms", "x floor", "host ms: schedule / model / update"]


def format_row(case: dict) -> str:
    return " | ".join(_cells(case))


def _cells(case: dict) -> list[str]:
    if "decode_step_ms_median" in case:
        step = f"{case['decode_step_ms_median']:.3f}"
    else:
        step = f"{case['ms_per_output_token']:.3f} (total / tokens)"
    phases = case.get("decode_phase_ms_mean")
    host = " / ".join(f"{phases[k]:.3f}" for k in ("schedule", "execute_model", "update")) if phases else ""
    return [str(case["batch"]), case["engine"], f"{case['tokens_per_s']:,.0f}", step,
            f"{case['floor']['step_ms']:.3f}", f"{case['x_floor']:.1f}", host]


def markdown_table(cases: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(c)) + " |" for c in cases]
    return "\n".join(lines)


def markdown_report(result: dict) -> str:
    env = result["environment"]
    bw = result["copy_bandwidth_bytes_per_s"]
    floor_note = (
        "Floor: the least time a decode step can take if it reads every weight once "
        f"({result['cases'][0]['floor']['weight_bytes'] / 1e6:.0f} MB, bf16, tied LM head counted once) and the batch's "
        f"KV cache at the mean context ({result['prompt_len']} + {result['output_len']}/2 tokens), at the "
        f"device-to-device copy bandwidth measured in this run ({bw / 1e12:.2f} TB/s, read + write). "
        "'x floor' = decode step / floor (for generate(): total time per output token / floor)."
    )
    correctness = "\n".join(f"- {dtype}: {c['summary']}" for dtype, c in result["correctness"].items())
    return f"""# GPU benchmark: our engine vs transformers (issue 8)

Command: `{result['command']}` (through the device tool: see bench/README.md)
Run: {env['date_utc']} UTC on {env['device']}; torch {env['torch']} (CUDA {env['cuda']}), Triton {env['triton']},
transformers {env['transformers']}, Python {env['python']}.

Model: SmolLM2-135M's shape, random weights (normal(0, {result['config']['init_std']})), bfloat16.
Workload: every case submits all requests at once, {result['prompt_len']} random prompt tokens and
{result['output_len']} greedy output tokens each. Output tok/s is end to end (prefill included). Decode step:
median steady-state step (ours: a whole engine step, schedule + model + sampling + update, host-synchronized;
StaticCache: one graph replay plus its input updates and the tokens' copy to the host). Our engine is the
engine core (Scheduler + ModelRunner) without detokenization: there is no tokenizer for random weights.

Greedy tokens vs transformers generate() on this card:
{correctness}

{markdown_table(result['cases'])}

{floor_note}

{chr(10).join('- ' + line for line in result['targets']['lines'])}
"""


if __name__ == "__main__":
    sys.exit(main())
