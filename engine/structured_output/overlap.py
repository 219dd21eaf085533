"""The synchronous step with the grammar bitmask filled while the forward pass runs.

Mirrors: vllm.v1.engine.core:EngineCore.step (vllm 0.33.0)
vLLM starts the step with execute_model(scheduler_output, non_block=True), fills the mask on the
scheduler side with get_grammar_bitmask while the model runs, and only then sends
sample_tokens(grammar_output) (vllm/v1/engine/core.py:667-697 EngineCore.step); the runner keeps
the logits between the two calls (vllm/v1/worker/gpu/model_runner.py:1655-1690
GPUModelRunner.sample_tokens applies the mask and samples). Ours, one process on a CPU: the
forward runs on a worker thread (torch's kernels release the GIL), the mask is filled on the
engine thread, and the worker waits for it only once its logits are ready (the grammar_output it
gets is a Future, ModelRunner.execute_model_input). Steps without a structured request that
samples run inline, as before: a thread hop buys nothing there.

SGLang 0.5.23 overlaps the other way round: its overlap loop launches batch N + 1's forward and
then processes batch N's result (sglang/srt/managers/scheduler.py:2107-2128
Scheduler.event_loop_overlap), because N + 1's mask needs the grammar advanced over N's tokens; so
a batch with grammars delays its sampling (sglang/srt/managers/tp_worker.py:717-740
TpModelWorker.forward_batch_generation, delay_sample_func) to launch_batch_sample_if_needed, where
_preprocess_logits fills and applies the mask (sglang/srt/model_executor/model_runner.py:2075-2101
ModelRunner._preprocess_logits) after the previous result was processed, while the GPU is busy.
"""
from __future__ import annotations

import contextvars
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.structured_output.scheduling import sampling_ids

if TYPE_CHECKING:
    from engine.model_runner import ModelRunner
    from engine.outputs import ModelRunnerOutput, SchedulerOutput
    from engine.scheduler import Scheduler


@dataclass
class OverlapTimes:
    """Ours, for bench/structured_output.py: one overlapped step's bitmask fill and forward pass
    (perf_counter seconds) and how long the two ran at the same time."""

    fill_s: float
    forward_s: float
    overlap_s: float


@dataclass
class OverlappedStep:
    scheduler: "Scheduler"
    model_runner: "ModelRunner"
    # The last steps' times (a bounded window: a long-running server does not grow it).
    times: list[OverlapTimes] = field(default_factory=list)
    max_times: int = 4096
    _executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="servetrace-forward"))

    def needs_mask(self, scheduler_output: "SchedulerOutput") -> bool:
        """A structured request samples this step (not mid-prompt): the step has a mask to fill."""
        return bool(sampling_ids(self.scheduler.requests, scheduler_output))

    def execute(self, scheduler_output: "SchedulerOutput") -> "ModelRunnerOutput":
        """execute_model with the step's bitmask filled on this thread while the forward runs."""
        # Inputs are prepared here: the scheduler's requests are only ever read from this thread.
        model_input = self.model_runner.prepare_model_input(scheduler_output)
        grammar_future: Future = Future()
        # The worker runs in a copy of this thread's context: a tracer's open step follows it.
        context = contextvars.copy_context()
        future = self._executor.submit(context.run, self.model_runner.execute_model_input, model_input, grammar_future)
        fill_start = time.perf_counter()
        fill_grammar_bitmask(grammar_future, self.scheduler, scheduler_output)
        fill_end = time.perf_counter()
        output = future.result()
        if model_input is not None and model_input.forward_window is not None:
            self._record(fill_start, fill_end, *model_input.forward_window)
        return output

    def _record(self, fill_start: float, fill_end: float, forward_start: float, forward_end: float) -> None:
        overlap = max(0.0, min(fill_end, forward_end) - max(fill_start, forward_start))
        self.times.append(OverlapTimes(fill_end - fill_start, forward_end - forward_start, overlap))
        if len(self.times) > self.max_times:
            del self.times[: len(self.times) - self.max_times]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


def fill_grammar_bitmask(grammar_future: Future, scheduler: "Scheduler", scheduler_output: "SchedulerOutput") -> None:
    """The step's mask into the Future the model thread waits on once its logits are ready (the
    batch queue of async scheduling fills it in the same order); a failure reaches that thread too."""
    try:
        grammar_future.set_result(scheduler.get_grammar_bitmask(scheduler_output))
    except BaseException as exc:
        grammar_future.set_exception(exc)  # the model thread must not wait forever
        raise
