"""Labs that replay a workload through schedulers, without a model (the model's cost is not the point).

Each one drives our scheduler and vLLM 0.33's real V1 Scheduler + KVCacheManager (the
synchronous Scheduler: replay cannot drive the AsyncScheduler that 0.33 uses by default) with
tracer.replay, and says whether the two agreed step for step. SGLang's RadixCache appears in
tracer.labs.prefix_labs.
"""
from __future__ import annotations

from statistics import fmean

from tracer.replay.compare import compare_logs
from tracer.replay.config import ReplayConfig
from tracer.replay.runners import ReplayLog, drive, make_scheduler_runner
from tracer.replay.workload import WorkloadRequest, memory_pressure, pseudo_random_ids, sharegpt_like
from tracer.labs.registry import Lab, LabResult, Table


def replay_both(workload: list[WorkloadRequest], config: ReplayConfig, engines: list[str]) -> tuple[dict[str, ReplayLog], str]:
    """Logs per engine, and 'yes' / 'NO (step N)' / '-' for whether mini and vLLM agreed."""
    logs = {engine: drive(make_scheduler_runner(engine, config), workload) for engine in engines}
    for engine, log in logs.items():
        if log.stalled:
            raise RuntimeError(f"{engine} replay stalled: {log.stalled}")
    if "mini" in logs and "vllm" in logs:
        comparison = compare_logs(logs["mini"], logs["vllm"])
        agreed = "yes" if comparison.agree else f"NO (from step {comparison.divergence.step if comparison.divergence else '?'})"
    else:
        agreed = "-"
    return logs, agreed


def first_token_steps(log: ReplayLog, workload: list[WorkloadRequest]) -> dict[str, int]:
    """Steps from arrival until the step that samples a request's first token (a preemption restarts the count)."""
    arrival = {r.id: r.arrival_step for r in workload}
    prompt = {r.id: len(r.prompt_token_ids) for r in workload}
    done: dict[str, int] = {}
    computed: dict[str, int] = {}
    for step in log.steps:
        for admission in step.admitted:
            computed[admission.request_id] = admission.cached_tokens
        for request_id, num_tokens in step.scheduled:
            computed[request_id] = computed.get(request_id, 0) + num_tokens
            if request_id not in done and computed[request_id] >= prompt[request_id]:
                done[request_id] = step.step - arrival[request_id] + 1
        for request_id in step.preempted:
            computed[request_id] = 0
    return done


def _tokens_per_step(log: ReplayLog) -> list[int]:
    return [sum(n for _, n in step.scheduled) for step in log.steps]


# -- chunked prefill ------------------------------------------------------------------------


def chunked_prefill(
    budgets: list[int] = [2048, 512, 256, 128], long_prompt: int = 1200, decoders: int = 4, engines: list[str] = ["mini", "vllm"]
) -> LabResult:
    def workload() -> list[WorkloadRequest]:
        requests = [WorkloadRequest(f"d{i}", 0, pseudo_random_ids(f"decoder-prompt-{i}", 32), 48) for i in range(decoders)]
        requests.append(WorkloadRequest("long", 6, pseudo_random_ids("long-prompt", long_prompt), 4))
        return requests

    settings = [("off", 2048, 0)] + [("on", b, 0) for b in budgets] + [("on", 2048, 128)]
    rows = []
    for chunked, budget, threshold in settings:
        config = ReplayConfig(
            block_size=16, num_blocks=512, max_num_seqs=16, max_num_batched_tokens=budget, max_model_len=2048,
            enable_chunked_prefill=chunked == "on", long_prefill_token_threshold=threshold,
        )
        requests = workload()
        logs, agreed = replay_both(requests, config, engines)
        log = logs[engines[-1]]
        decoder_ids = {r.id for r in requests if r.id != "long"}
        decode_steps = [s for s in log.steps if any(rid in decoder_ids and n == 1 for rid, n in s.scheduled)]
        heaviest = max(sum(n for _, n in s.scheduled) for s in decode_steps)
        with_prefill = sum(1 for s in decode_steps if any(rid == "long" and n > 1 for rid, n in s.scheduled))
        ttft = first_token_steps(log, requests)["long"]
        rows.append([
            chunked, budget, threshold or "-", heaviest, with_prefill, ttft, len(log.steps), agreed,
        ])
    caption = (
        f"{decoders} requests decode 48 tokens each; a {long_prompt}-token prompt arrives at step 6. "
        "'Heaviest decode step' is the most tokens in one step that also carried a decode token: "
        "the step time every decoding request waits for. Counts come from the scheduler alone, with no model: "
        "the chunked-prefill-ms lab times the same trade in milliseconds on our engine."
    )
    table = Table(
        "Decode steps under a long prefill (vLLM's Scheduler; mini must agree)",
        ["chunked prefill", "max_num_batched_tokens", "long_prefill_token_threshold", "heaviest decode step (tokens)",
         "decode steps carrying a prefill chunk", "long prompt: steps to first token", "total steps", "mini == vLLM"],
        rows, caption,
    )
    return LabResult("chunked-prefill", "Chunked prefill: the tokens in each step", {}, [table])


# -- preemption -----------------------------------------------------------------------------


def preemption(pool_blocks: list[int] = [16, 24, 32, 64], requests: int = 10, engines: list[str] = ["mini", "vllm"]) -> LabResult:
    workload = memory_pressure(num_requests=requests, seed=0)
    rows = []
    for num_blocks in pool_blocks:
        config = ReplayConfig(block_size=16, num_blocks=num_blocks, max_num_seqs=16, max_num_batched_tokens=256, max_model_len=512)
        logs, agreed = replay_both(workload, config, engines)
        log = logs[engines[-1]]
        preemptions, recomputed = 0, 0
        computed: dict[str, int] = {}  # every unfinished request's count after the previous step
        for step in log.steps:
            for request_id in step.preempted:
                preemptions += 1
                recomputed += computed.get(request_id, 0)
            # The step records only the counts that changed; finished requests leave.
            computed.update(step.num_computed_tokens)
            for request_id, _ in step.finished:
                computed.pop(request_id, None)
        batch = fmean(len(s.scheduled) for s in log.steps)
        usage = max(1 - s.num_free_blocks / (num_blocks - 1) for s in log.steps)
        rows.append([num_blocks - 1, preemptions, recomputed, len(log.steps), f"{batch:.2f}", f"{usage:.0%}", agreed])
    table = Table(
        "Preemption under KV pressure (vLLM's Scheduler; mini must agree)",
        ["usable KV blocks (16 tokens)", "preemptions", "tokens recomputed", "steps to finish", "mean requests per step",
         "peak KV usage", "mini == vLLM"],
        rows,
        f"{requests} requests arrive at once (prompts 20-60 tokens, 40-80 output tokens, memory-pressure workload, seed 0). "
        "'Tokens recomputed' sums the computed tokens each victim held when it was preempted: vLLM V1 "
        "preempts by recompute, so that work is done again.",
    )
    return LabResult("preemption", "Preemption under KV pressure", {}, [table])


# -- token budget ---------------------------------------------------------------------------


def token_budget(
    settings: list[str] = ["16x256", "64x256", "64x1024", "64x4096"], requests: int = 120, engines: list[str] = ["mini", "vllm"]
) -> LabResult:
    workload = sharegpt_like(num_requests=requests, requests_per_step=0.5, max_prompt_len=1024, max_output_len=128, seed=0)
    rows = []
    for setting in settings:
        max_num_seqs, budget = (int(part) for part in setting.split("x"))
        config = ReplayConfig(block_size=16, num_blocks=4096, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, max_model_len=2048)
        logs, agreed = replay_both(workload, config, engines)
        log = logs[engines[-1]]
        ttft = sorted(first_token_steps(log, workload).values())
        per_step = _tokens_per_step(log)
        rows.append([
            max_num_seqs, budget, len(log.steps), f"{fmean(per_step):.0f}", max(per_step),
            f"{fmean(len(s.scheduled) for s in log.steps):.1f}", f"{fmean(ttft):.1f}", ttft[int(0.9 * (len(ttft) - 1))], agreed,
        ])
    table = Table(
        "The token budget and the batch cap (vLLM's Scheduler; mini must agree)",
        ["max_num_seqs", "max_num_batched_tokens", "steps to drain", "mean tokens per step", "max tokens per step",
         "mean requests per step", "mean steps to first token", "p90 steps to first token", "mini == vLLM"],
        rows,
        f"{requests} ShareGPT-like requests (seeded lognormal lengths, Poisson arrivals at 0.5 per step). "
        "Fewer steps means more work per step: throughput, if the GPU keeps up; a step's time grows with its tokens.",
    )
    return LabResult("token-budget", "Scheduler token budget", {}, [table])


LABS = [
    Lab("chunked-prefill", "Chunked prefill: the tokens in each step", chunked_prefill,
        {"budgets": [2048, 512, 256, 128], "long_prompt": 1200, "decoders": 4, "engines": ["mini", "vllm"]}),
    Lab("preemption", "Preemption under KV pressure", preemption, {"pool_blocks": [16, 24, 32, 64], "requests": 10, "engines": ["mini", "vllm"]}),
    Lab("token-budget", "Scheduler token budget", token_budget,
        {"settings": ["16x256", "64x256", "64x1024", "64x4096"], "requests": 120, "engines": ["mini", "vllm"]}),
]
