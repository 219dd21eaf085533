"""Why SGLang did not admit the waiting queue's head in a step, read off the state its schedule span
records at the end of get_next_batch_to_run (tracer/instrument/extractors/sglang.py: the
PrefillAdder's budgets after its last add_one_req, and that call's AddReqResult).

The codes are the V1 scheduler's where the mechanisms agree (token-budget, max-num-seqs, kv-blocks),
so that a workload explains alike in both engines. Where SGLang differs, the evidence says how
(line numbers: sglang/srt/managers/scheduler.py and schedule_policy.py, SGLang 0.5.23):
- retraction comes after the refusal, not before it: get_next_batch_to_run tries a prefill batch
  first (:3975-3976) and only when none forms does update_running_batch retract decodes (:4493); so
  a step that retracted still names the head's own cause (vLLM: a step that preempted admits
  nothing, and its code is "preemption");
- the KV check reserves decode room for the running requests (new_token_ratio times their
  max_new_tokens, schedule_policy.py: PrefillAdder, rem_total_tokens), so "kv-blocks" can stop a
  head that the free pool alone would hold;
- once add_one_req says NO_TOKEN the running batch is marked full (:4280-4284) and later passes do
  not offer anyone to the adder until a request leaves (:4232-4238);
- a running request sits out the steps that run a new prefill batch ("prefill-first").
"""
from __future__ import annotations

from typing import Any

from tracer.traces.schema import (
    BATCH_PREEMPTED, NUM_RUNNING, SCHED_CHUNKED, SCHED_MAX_SEQS, SCHED_NEW_TOKEN_RATIO, SCHED_REM_CHUNK, SCHED_REM_INPUT,
    SCHED_REM_TOTAL, SCHED_TOKEN_BUDGET, WAITING_HEAD, WAITING_HEAD_RESULT, WAITING_HEAD_TOKENS,
)

PREFILL_FIRST = ("prefill-first", "SGLang ran a new prefill batch in this step instead of the decode batch "
                 "(get_next_batch_to_run forms a prefill batch first, scheduler.py:3975-3976)")


def sglang_waiting_cause(step: Any) -> tuple[str, str]:
    """`step`: a tracer.traces.request_steps.Step whose schedule span is SGLang's."""
    head, result = step.attr(WAITING_HEAD), step.attr(WAITING_HEAD_RESULT)
    retracted = step.attr(BATCH_PREEMPTED) or []
    then = (f"; the step then retracted {', '.join(retracted)} to keep decoding (SGLang retracts after "
            "the refusal, update_running_batch, scheduler.py:4493)") if retracted else ""
    running, max_seqs = step.attr(NUM_RUNNING), step.attr(SCHED_MAX_SEQS)
    rem_input, rem_chunk, rem_total = step.attr(SCHED_REM_INPUT), step.attr(SCHED_REM_CHUNK), step.attr(SCHED_REM_TOTAL)
    tokens = step.attr(WAITING_HEAD_TOKENS)
    if result == "NO_TOKEN":
        ratio = step.attr(SCHED_NEW_TOKEN_RATIO)
        return "kv-blocks", (f"add_one_req said NO_TOKEN for the head {head} ({tokens} tokens to prefill): "
                             f"{rem_total} KV tokens left after the running requests' reserved decodes "
                             f"(new_token_ratio {ratio:.2f})" + then)
    if result == "OTHER":
        users = ", ".join(f"{rid}:{n}" for rid, n in step.batch.items())
        if rem_input is not None and rem_input <= 0 or rem_chunk is not None and rem_chunk <= 0:
            return "token-budget", f"the {step.attr(SCHED_TOKEN_BUDGET)}-token prefill budget (max_prefill_tokens) went to {users}" + then
        if step.attr(SCHED_CHUNKED) is False:
            return "token-budget", (f"chunked prefill is off and the head {head}'s {tokens} tokens do not fit the "
                                    f"{rem_input} prefill tokens left (add_one_req: OTHER)" + then)
        return "token-budget", (f"add_one_req said OTHER for the head {head}: {rem_input} prefill / {rem_chunk} chunk "
                                f"tokens left, {tokens} asked" + then)
    if result in ("BATCH_FULL", "NOT_TRIED"):
        if running is not None and max_seqs is not None and int(running) >= int(max_seqs):
            return "max-num-seqs", f"{running} requests running, max_running_requests {max_seqs}" + then
        if result == "BATCH_FULL" or retracted:  # a retraction clears batch_is_full after the pass (scheduler.py:4545)
            return "kv-blocks", ("the running batch is marked full since an add_one_req found no KV tokens "
                                 f"(batch_is_full, scheduler.py:4280-4284): the head {head} is not offered to the adder "
                                 "until a request leaves" + then)
        if rem_input is not None and rem_input <= 0 or rem_chunk is not None and rem_chunk <= 0:
            users = ", ".join(f"{rid}:{n}" for rid, n in step.batch.items())
            return "token-budget", f"the prefill budget went to {users} before the head {head} was offered" + then
        return "not-offered", f"the pass did not offer the head {head} to the PrefillAdder" + then
    if head is None and step.attr(SCHED_NEW_TOKEN_RATIO) is not None:
        return "no-waiting-head", "the waiting queue was empty after this step's pass" + then
    return "unrecorded", "this step's schedule span has no SGLang admission state"
