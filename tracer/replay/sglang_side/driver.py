"""SGLang 0.5.23's real Scheduler, driven step by step without a model: the SGLang side of a
scheduler replay. Runs in .venv-sglang,
run as a script (python tracer/replay/sglang_side/driver.py), one JSON job per stdin line, one JSON result per stdout line; it imports nothing of servetrace's
so that SGLang's venv needs only SGLang (a job with a trace_file imports servetrace's tracing).

What runs is SGLang's own code: Scheduler.get_next_batch_to_run (sglang/srt/managers/scheduler.py:3894)
with its _get_new_batch_prefill_raw (:4079: SchedulePolicy.calc_priority, PrefillAdder.add_one_req /
add_chunked_req, with policy priority PrefillAdder.preempt_to_schedule, ScheduleBatch.init_new +
prepare_for_extend) and update_running_batch (:4459:
check_decode_mem, ScheduleBatch.retract_decode, prepare_for_decode), then process_batch_result
(:5074: BatchResultProcessor.process_batch_result_prefill / _decode, finish checks,
release_kv_cache / checkpoint_kv_cache) over a real RadixCache (sglang/srt/mem_cache/radix_cache.py),
ReqToTokenPool and TokenToKVPoolAllocator / PagedTokenToKVPoolAllocator on the CPU.

What does not run, and why:
- Scheduler.__init__ (scheduler.py:465): it initialises torch.distributed, loads a model
  (init_model_worker :1128) and binds ZMQ sockets. The Scheduler here is made with __new__ and the
  attributes __init__ would set: the real init_* methods where they need no model or sockets
  (init_running_status :1315, init_chunked_prefill :1351, init_schedule_policy :1436, ...), and
  what the model worker would report (get_worker_info: max_total_num_tokens, max_prefill_tokens,
  max_running_requests, ...) from the replay config;
- Scheduler.run_batch (:4614), i.e. the forward pass: FORWARD_STAND_IN below returns the
  workload's forced token ids as a GenerationBatchResult, which is what
  TpModelWorker.forward_batch_generation (sglang/srt/managers/tp_worker.py:622) returns;
- request intake (ingest_requests / handle_generate_request :2943): requests are built as Req and
  enter through the real Scheduler._add_request_to_queue (:3480) on their arrival step;
- the overlap event loop: the loop below is event_loop_normal (:2026) (overlap disabled, as the
  live CPU server runs with --disable-overlap-schedule).
"""
from __future__ import annotations

import json
import logging
import os
import sys

os.environ.setdefault("SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", "0")


def main() -> int:
    logging.disable(logging.WARNING)  # SGLang logs each retraction as a warning: that goes in the records
    from harness import run_job  # beside this script: the script's folder is sys.path[0]

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            job = json.loads(line)
            result = run_traced(job) if job.get("trace_file") else run_job(job)
        except Exception as exc:  # one bad job must not kill the shared process
            import traceback

            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        print(json.dumps(result), flush=True)
    return 0


def run_traced(job: dict) -> dict:
    """The job with servetrace's SGLang hooks on (the editable install in .venv-sglang): the same hop
    spans a live SGLang server's scheduler emits, from the same methods."""
    from pathlib import Path

    from harness import run_job
    from tracer.replay.tracing import traced

    from tracer.instrument.otel import CAPTURE_CONTENT_ENV

    saved = os.environ.pop(CAPTURE_CONTENT_ENV, None)
    if job.get("capture_content"):  # the parent's SERVETRACE_* settings do not reach this process
        os.environ[CAPTURE_CONTENT_ENV] = "1"
    try:
        with traced("sglang", Path(job["trace_file"])) as notes:
            result = run_job(job, on_arrival=_request_root())
    finally:
        os.environ.pop(CAPTURE_CONTENT_ENV, None)
        if saved is not None:
            os.environ[CAPTURE_CONTENT_ENV] = saved
    result["notes"] = notes
    return result


def _request_root():
    """Each request's trace: an enqueue span at its arrival (the replay feeds the queue directly, not
    through the hooked handle_generate_request), registered so its cache calls and retractions nest
    under it, as in a live server."""
    from tracer.instrument.registry import registry
    from tracer.replay.tracing import RequestTraces
    from tracer.traces.schema import INPUT_TOKENS, MAX_TOKENS

    roots = RequestTraces()

    def on_arrival(req) -> None:
        span = roots.open(req.rid, {INPUT_TOKENS: len(req.origin_input_ids), MAX_TOKENS: req.sampling_params.max_new_tokens})
        if span is not None:
            registry.register(req.rid, span.get_span_context())
            roots.close(span)

    return on_arrival


if __name__ == "__main__":
    raise SystemExit(main())
