"""The engine loop: add_request / step / abort, and an offline generate API.

Mirrors: vllm.v1.engine.llm_engine:LLMEngine (vllm 0.33.0)
With EngineCore folded in (one process): each step() is EngineCore.step (schedule -> execute_model -> update_from_output) followed
by the OutputProcessor's work (incremental detokenization and stop strings).
"""
from __future__ import annotations

import gc
import itertools
import time
from typing import Any, Callable

import torch

from engine import cpu_gemm
from engine.async_scheduler import AsyncScheduler
from engine.batch_queue import BatchQueue
from engine.config import EngineConfig, check_speculative_config
from engine.loader import load_model
from engine.model_runner import ModelRunner, num_blocks_for_memory
from engine.omp_env import on_passing_thread
from engine.output_processor import OutputProcessor, RequestOutput
from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sglang_scheduler import SglangScheduler
from engine.structured_output import validate_structured_outputs
from engine.structured_output.params import StructuredOutputError
from engine.structured_output.manager import StructuredOutputManager
from engine.structured_output.overlap import OverlappedStep
from engine.tokenizer import PromptError, Tokenizer, default_model_path


class LLMEngine:
    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        check_speculative_config(config)
        self.model_path = config.model.model or default_model_path()
        device = torch.device(config.model.device)
        dtype = _resolve_dtype(config.model.dtype, device)
        torch.manual_seed(config.model.seed)
        threads = torch.get_num_threads()  # per thread under OpenMP: the builder thread takes the caller's

        def build() -> ModelRunner:
            # Loading and packing the weights and allocating the KV pool run parallel regions: on a
            # passing thread, the one OpenMP pool left is the stepping thread's (on_passing_thread).
            torch.set_num_threads(threads)
            model, model_config = load_model(self.model_path, device=device, dtype=dtype)
            # The context is the smaller of what was asked and what the model was trained for.
            config.scheduler.max_model_len = min(config.scheduler.max_model_len, model_config.max_position_embeddings)
            config.cache.num_blocks = config.cache.num_blocks or num_blocks_for_memory(
                model_config, config.cache.block_size, config.cache.kv_cache_memory_bytes, dtype
            )
            return ModelRunner(
                model, model_config, config.cache.block_size, config.cache.num_blocks, device, dtype,
                attention_backend=config.model.attention_backend,
                use_cuda_graphs=False if config.model.enforce_eager else None,
                max_num_seqs=config.scheduler.max_num_seqs,
                max_model_len=config.scheduler.max_model_len,
                speculative_config=config.speculative,
            )

        self.model_runner = on_passing_thread(build)
        self.model_config = model_config = self.model_runner.model_config
        self.max_model_len = config.scheduler.max_model_len
        num_blocks = config.cache.num_blocks
        self.tokenizer = Tokenizer(self.model_path, max_model_len=self.max_model_len)
        self.eos_token_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else model_config.eos_token_id
        # Mirrors: vllm.v1.engine.core:EngineCore.__init__ (vllm 0.33.0): one manager, shared with the scheduler.
        self.structured_output_manager = StructuredOutputManager(
            self.tokenizer.hf, model_config.vocab_size, config.scheduler.max_num_seqs,
            stop_token_ids=[self.eos_token_id] if self.eos_token_id is not None else None,
            encode=self.tokenizer.encode, decode=self.tokenizer.decode, jump_forward=config.structured_outputs.jump_forward,
            # With speculation the bitmask has 1 + k rows per request (vLLM: num_speculative_tokens).
            max_num_spec_tokens=config.speculative.num_speculative_tokens if config.speculative else 0,
        )
        # cache_mode "sglang" runs SGLang's own loop (prefill-or-decode steps, retraction), not vLLM's.
        if config.scheduler.cache_mode == "sglang":
            if config.scheduler.async_scheduling:
                raise ValueError("async scheduling is vLLM's AsyncScheduler; cache_mode 'sglang' runs synchronously")
            if config.speculative is not None:
                raise ValueError("speculative decoding runs with vLLM's scheduler only (cache_mode 'vllm')")
            if config.structured_outputs.jump_forward:
                # SGLang 0.4.3 sent a jumped request back to be prefilled (check_for_jump_forward ->
                # _extend_requests_to_queue): not mirrored, and a flag that did nothing would mislead.
                raise ValueError("jump-forward runs with vLLM's scheduler only here (cache_mode 'vllm')")
            # Constrained requests wait in SGLang's grammar queue (engine/structured_output/sglang_grammar.py).
            self.scheduler = SglangScheduler(config.scheduler, config.cache, num_blocks,
                                             structured_output_manager=self.structured_output_manager)
        else:
            scheduler_class = AsyncScheduler if config.scheduler.async_scheduling else Scheduler
            self.scheduler = scheduler_class(
                config.scheduler, config.cache, num_blocks, self.structured_output_manager,
                speculative_config=config.speculative,
            )
        # The synchronous step with a mask to fill runs the forward on a worker thread meanwhile
        # (None: the mask is filled first, on one thread; a bench's baseline).
        self.overlapped_step: OverlappedStep | None = OverlappedStep(self.scheduler, self.model_runner)
        # Async scheduling steps through the batch queue (vLLM: EngineCore.step_fn).
        self.batch_queue = (
            BatchQueue(self.scheduler, self.model_runner, self.structured_output_manager)
            if config.scheduler.async_scheduling else None
        )
        self.output_processor = OutputProcessor(self.tokenizer)
        self._ids = itertools.count()
        # The startup heap (model, tokenizer, imports) lives as long as the engine: mark it static so
        # the collector stops rescanning it (vLLM: EngineCore.__init__ -> freeze_gc_heap).
        gc.collect()
        gc.freeze()

    # -- request intake ------------------------------------------------------------------

    def render(self, prompt: str | list[int] | None = None, messages: list[dict[str, Any]] | None = None) -> list[int]:
        """Text, token ids or chat messages -> validated prompt token ids (the request.render hop)."""
        if messages is not None:
            return self.tokenizer.render_chat(messages)
        if prompt is None:
            raise PromptError("a prompt or chat messages are required")
        return self.tokenizer.render_completion(prompt)

    def add_request(
        self,
        request_id: str | None,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams | None = None,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> Request:
        """Enqueue an already-rendered request (the engine.enqueue hop)."""
        # Mirrors: vllm.v1.engine.llm_engine:LLMEngine.add_request (vllm 0.33.0) (+ InputProcessor's length checks)
        params = sampling_params or SamplingParams()
        self.check_request_size(prompt_token_ids, params)
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        request = Request(
            request_id=request_id,
            prompt_token_ids=list(prompt_token_ids),
            sampling_params=params,
            eos_token_id=self.eos_token_id,
            arrival_time=arrival_time if arrival_time is not None else time.time(),
            priority=priority,
        )
        if request.use_structured_output:
            # vLLM: EngineCore.preprocess_add_request -> StructuredOutputManager.grammar_init (vllm/v1/engine/core.py:1126-1148 EngineCore.preprocess_add_request).
            self.structured_output_manager.grammar_init(request)
        self.scheduler.add_request(request)
        self.output_processor.add_request(request_id, request.prompt_token_ids, params)
        return request

    def check_request_size(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise PromptError for a request this engine can never serve: empty, longer than the
        context, or more KV than the whole pool (it would preempt itself forever). The one
        size check, shared by the offline engine and the server's AsyncLLM."""
        if not prompt_token_ids:
            raise PromptError("the prompt is empty")
        if params.structured_outputs is not None:
            spec = self.config.speculative
            if spec is not None and spec.method == "ngram_gpu":
                # The drafts are proposed on the model thread and never reach the scheduler, whose
                # bitmask rows for them are placeholders (vLLM 0.33 leaves rows after a -1 draft
                # unconstrained, vllm/v1/structured_output/__init__.py:476-487
                # StructuredOutputManager.grammar_bitmask): accepted drafts
                # could break the grammar, so the combination is refused rather than served wrong.
                raise StructuredOutputError("structured outputs are not served with --speculative-method ngram_gpu "
                                            "(async speculation); use ngram without --async-scheduling")
            validate_structured_outputs(params.structured_outputs)
        needed = len(prompt_token_ids) + params.max_tokens
        if needed > self.max_model_len:
            raise PromptError(
                f"this model's maximum context length is {self.max_model_len} tokens; the request asks for "
                f"{needed} ({len(prompt_token_ids)} in the prompt, {params.max_tokens} in max_tokens)"
            )
        if needed > self.max_request_tokens:
            raise PromptError(
                f"the request needs {needed} tokens ({len(prompt_token_ids)} in the prompt, {params.max_tokens} in "
                f"max_tokens) but the KV cache holds at most {self.max_request_tokens}"
            )

    @property
    def max_request_tokens(self) -> int:
        """Prompt + output tokens one request may use: the context, and what the KV pool holds."""
        cache = self.config.cache
        return min(self.max_model_len, (cache.num_blocks - 1) * cache.block_size)

    def abort_request(self, request_ids: str | list[str]) -> None:
        """Abort requests (client gone): their KV blocks return to the pool at once."""
        # Mirrors: vllm.v1.engine.llm_engine:LLMEngine.abort_request (vllm 0.33.0)
        finished = self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)
        self.output_processor.abort_requests([request.request_id for request in finished])

    def has_unfinished_requests(self) -> bool:
        # A step still in the batch queue has output to deliver.
        return self.scheduler.has_unfinished_requests() or bool(self.batch_queue)

    # -- the busy loop -------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One iteration: schedule, run the model, update requests, detokenize."""
        # Mirrors: vllm.v1.engine.core:EngineCore.step, vllm.v1.engine.output_processor:OutputProcessor.process_outputs (vllm 0.33.0), in that order
        if self.batch_queue is not None:
            # Async scheduling (EngineCore.step_with_batch_queue): a call that only schedules
            # returns no output. Drafts ("ngram_gpu" only) stay on the runner's side: vLLM's
            # post_step takes none under async scheduling (vllm/v1/engine/core.py:699-705 EngineCore.post_step).
            core_outputs = self.batch_queue.step() or []
        else:
            scheduler_output = self.scheduler.schedule()
            manager = self.structured_output_manager
            if self.overlapped_step is not None and self.overlapped_step.needs_mask(scheduler_output):
                # vLLM 0.33's order: the forward starts, the mask is filled meanwhile, then sampling
                # applies it (vllm/v1/engine/core.py:667-697 EngineCore.step).
                model_runner_output = self.overlapped_step.execute(scheduler_output)
            else:  # no mask to fill; or overlapped_step None (a bench's serial baseline): the mask first
                grammar_output = self.scheduler.get_grammar_bitmask(scheduler_output) if self.overlapped_step is None else None
                if scheduler_output.is_empty and manager.has_pending_compiles():
                    manager.wait_for_compiles(timeout=0.05)  # nothing runs until one is ready
                model_runner_output = self.model_runner.execute_model(scheduler_output, grammar_output)
            core_outputs = self.scheduler.update_from_output(scheduler_output, model_runner_output)
            # vLLM: EngineCore.post_step hands the drafts proposed in this step to the scheduler.
            draft_token_ids = self.model_runner.take_draft_token_ids()
            if draft_token_ids is not None:
                self.scheduler.update_draft_token_ids(draft_token_ids)
        processed = self.output_processor.process_outputs(core_outputs)
        if processed.reqs_to_abort:
            # A stop string ends the request in the engine, as vLLM's output processor aborts it.
            self.scheduler.finish_requests(processed.reqs_to_abort, RequestStatus.FINISHED_STOPPED)
        return processed.request_outputs

    def generate(
        self,
        prompts: list[str | list[int]] | str,
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        on_output: Callable[[RequestOutput], None] | None = None,
    ) -> list[RequestOutput]:
        """Offline batch generation: all prompts go in at once and are batched by the scheduler."""
        if isinstance(prompts, str):
            prompts = [prompts]
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        request_ids = [self.add_request(None, self.render(p), sp).request_id for p, sp in zip(prompts, params)]
        final: dict[str, RequestOutput] = {}
        while self.has_unfinished_requests():
            for out in self.step():
                if on_output is not None:
                    on_output(out)
                if out.finished:
                    final[out.request_id] = out
        return [final[rid] for rid in request_ids]


def _resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        return cpu_gemm.default_dtype(device)
    try:
        dtype = getattr(torch, name)
    except AttributeError:
        dtype = None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return dtype
