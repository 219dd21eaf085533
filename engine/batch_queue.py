"""The engine step of async scheduling: a batch queue of depth 2, the model on a worker thread.

Mirrors: vllm.v1.engine.core:EngineCore.step_with_batch_queue (vllm 0.33.0)
vLLM hands each scheduled step to its executor without blocking (execute_model(non_block=True),
then sample_tokens) and keeps the futures in a deque of max_concurrent_batches (2 under async
scheduling with one pipeline stage, vllm/config/vllm.py:588-598
VllmConfig.max_concurrent_batches). A call schedules a new step if
the queue has room and returns at once; otherwise it blocks on the oldest step and applies its
output (vllm/v1/engine/core.py:708-822 EngineCore.step_with_batch_queue).

On our one-process CPU engine the executor is one worker thread. What runs there is
ModelRunner.execute_model_input: the forward pass and the sampler, whose torch kernels release the
GIL. What overlaps with it on the engine thread: scheduling the next step, preparing its inputs,
and applying the previous step's output (update_from_output, detokenization, stop strings). The
Python between kernels still takes the GIL, so on a CPU the gain is at most the host work per step
(bench/async_scheduling.py measures it).
"""
from __future__ import annotations

import contextvars
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from engine.model_runner import ModelRunner
from engine.outputs import EngineCoreOutput, ModelRunnerOutput, SchedulerOutput
from engine.scheduler import Scheduler
from engine.structured_output.overlap import fill_grammar_bitmask

BATCH_QUEUE_SIZE = 2  # vLLM: max_concurrent_batches with async scheduling and no pipeline parallelism


class BatchQueue:
    """Steps scheduled but not yet applied, oldest on the right (vLLM appends on the left)."""

    def __init__(self, scheduler: Scheduler, model_runner: ModelRunner, structured_output_manager=None,
                 size: int = BATCH_QUEUE_SIZE) -> None:
        self.scheduler = scheduler
        self.model_runner = model_runner
        self.structured_output_manager = structured_output_manager
        self.size = size
        self.queue: deque[tuple[Future[ModelRunnerOutput], SchedulerOutput]] = deque(maxlen=size)
        # One thread: steps execute in the order they were scheduled, each after the one before
        # (the runner fills a step's placeholders from the previous step's samples).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="servetrace-model")

    def __len__(self) -> int:
        return len(self.queue)

    def has_requests(self) -> bool:
        # Mirrors: vllm.v1.core.sched.interface:SchedulerInterface.has_requests (vllm 0.33.0)
        # Finished ids not yet sent keep the loop going: the runner must hear of them.
        return self.scheduler.has_unfinished_requests() or bool(self.scheduler.finished_req_ids)

    def step(self) -> list[EngineCoreOutput] | None:
        """Schedule one step if there is room; else wait for the oldest and apply its output.

        Returns the applied step's outputs, or None when this call only scheduled (vLLM returns
        (None, model_executed) there).
        """
        # Mirrors: vllm.v1.engine.core:EngineCore.step_with_batch_queue (vllm 0.33.0)
        assert len(self.queue) < self.size
        if self.queue and self._grammar_needs_tokens_in_flight():
            # vLLM defers such a step's sampling until the step before it is applied
            # (vllm/v1/engine/core.py:747-820 EngineCore.step_with_batch_queue); ours applies it first, so a
            # structured request's steps run synchronously (its bitmask and jump-forward need its tokens).
            return self._apply_oldest()
        if self.has_requests():
            scheduler_output = self.scheduler.schedule()
            manager = self.structured_output_manager
            # Inputs are prepared here, on the scheduling thread, before the previous step's
            # output is applied: the scheduler's requests are only ever read from this thread.
            model_input = self.model_runner.prepare_model_input(scheduler_output)
            # The model thread runs in a copy of this thread's context: context-local state (a tracer's
            # open step, say) follows the step it was scheduled in.
            context = contextvars.copy_context()
            # vLLM's order (core.py:734-755): the forward is started, then the mask is filled, then sampled.
            grammar_future: Future | None = Future() if manager is not None else None
            future = self._executor.submit(context.run, self.model_runner.execute_model_input, model_input, grammar_future)
            if manager is not None:
                fill_grammar_bitmask(grammar_future, self.scheduler, scheduler_output)
                if scheduler_output.is_empty and manager.has_pending_compiles():
                    manager.wait_for_compiles(timeout=0.05)  # nothing runs until one is ready
            model_executed = scheduler_output.total_num_scheduled_tokens > 0
            self.queue.appendleft((future, scheduler_output))
            if len(self.queue) < self.size and (model_executed or self.has_requests()):
                return None  # don't block unless the queue is full or nothing more can be scheduled
        elif not self.queue:
            return None

        return self._apply_oldest()

    def _apply_oldest(self) -> list[EngineCoreOutput]:
        future, scheduler_output = self.queue.pop()
        model_runner_output = future.result()
        # Aborts that came in while the step ran were applied by the caller between calls
        # (vLLM's _process_aborts_queue here); update_from_output skips finished requests.
        return self.scheduler.update_from_output(scheduler_output, model_runner_output)

    def _grammar_needs_tokens_in_flight(self) -> bool:
        return self.structured_output_manager is not None and any(
            request.use_structured_output for request in self.scheduler.running
        )

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
