"""Owns the model, its paged KV cache and the sampler; turns a SchedulerOutput into sampled tokens.

Mirrors: vllm.v1.worker.gpu.model_runner:GPUModelRunner, vllm.v1.worker.gpu_model_runner:GPUModelRunner (vllm 0.33.0)
Model Runner V2 (the first) is the 0.33 default (vllm/config/vllm.py:748-767
VllmConfig.use_v2_model_runner); V1 (the second) runs with VLLM_USE_V2_MODEL_RUNNER=0. Reduced
to one device and no persistent input batch: every step rebuilds its input tensors from the
request states it keeps. Those states follow the SchedulerOutput the way V1's do
(GPUModelRunner._update_states): a new request brings its block table, a running one appends
its new blocks, a resumed one replaces its table.

With speculation on (engine/spec_decode/), a request scheduled with drafts feeds its last known
token and the drafts as one chunk over the paged KV cache; the logits of those 1 + n positions go
to the rejection sampler, and after the step the drafter proposes the next drafts (V1's
propose_draft_token_ids / take_draft_token_ids). With "ngram_gpu" (the method async scheduling
runs with) the runner keeps its own copy of each request's tokens, proposes from it and puts
the drafts in the scheduler's placeholders itself (engine/spec_decode/worker_drafts.py).
"""
from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from engine import cpu_gemm
from engine.attention import resolve_attention_backend
from engine.attention_metadata import AttentionMetadata
from engine.config import SpeculativeConfig
from engine.cuda_graphs import DecodeCudaGraphs
from engine.math_utils import cdiv
from engine.model import LlamaConfig, LlamaForCausalLM
from engine.model_input import ModelInput, RequestInput
from engine.outputs import DraftTokenIds, ModelRunnerOutput, SchedulerOutput
from engine.request import Request
from engine.sampler import Sampler
from engine.spec_decode.ngram_proposer import NgramProposer
from engine.spec_decode.rejection_sampler import RejectionSampler, SpecDecodeMetadata
from engine.spec_decode.worker_drafts import StepPlan, WorkerDrafts
from engine.structured_output import apply as grammar_apply


def kv_cache_bytes_per_block(model_config: LlamaConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block takes across all layers, K and V."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_layer = 2 * block_size * model_config.num_key_value_heads * model_config.head_dim * itemsize
    return per_layer * model_config.num_hidden_layers


def num_blocks_for_memory(model_config: LlamaConfig, block_size: int, memory_bytes: int, dtype: torch.dtype) -> int:
    """How many KV blocks fit in memory_bytes (vLLM sizes the pool the same way from its memory budget)."""
    num_blocks = memory_bytes // kv_cache_bytes_per_block(model_config, block_size, dtype)
    if num_blocks < 2:
        raise ValueError(
            f"kv cache memory of {memory_bytes} bytes holds {num_blocks} blocks of {block_size} tokens; "
            "need at least 2 (one is the reserved null block)"
        )
    return num_blocks


@dataclass
class CachedRequestState:
    """What the runner keeps of a request between steps.

    Mirrors: vllm.v1.worker.gpu_input_batch:CachedRequestState (vllm 0.33.0), trimmed: the token
    ids stay on the scheduler's Request (one process), the block table is the runner's own.
    """

    request: Request
    block_ids: list[int]
    num_computed_tokens: int


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        model_config: LlamaConfig,
        block_size: int,
        num_blocks: int,
        device: torch.device | str,
        dtype: torch.dtype,
        attention_backend: str | None = None,
        use_cuda_graphs: bool | None = None,
        max_num_seqs: int = 256,
        max_model_len: int | None = None,
        prepack_cpu_weights: bool | None = None,
        speculative_config: SpeculativeConfig | None = None,
    ) -> None:
        """attention_backend: "torch" | "triton" (None: triton on CUDA, torch elsewhere).
        use_cuda_graphs: replay decode-only steps from CUDA graphs (None: on CUDA with triton);
        max_num_seqs / max_model_len size the graphs' static inputs.
        prepack_cpu_weights: run the model's linear layers through oneDNN with packed weights
        (engine/cpu_gemm.py; None: on the CPU when oneDNN is available). Changes model in place."""
        if prepack_cpu_weights is None:
            prepack_cpu_weights = torch.device(device).type == "cpu" and cpu_gemm.onednn_available()
        if prepack_cpu_weights:
            # vLLM does this in the linear method's process_weights_after_loading.
            cpu_gemm.prepack_linears(model)
        self.model = model
        self.model_config = model_config
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.device = torch.device(device)
        # libgomp reads its wait policy once, when torch loads it: read here once, not at every step (after a
        # forward pass the os.environ lookups cost some 50 us of the step's critical path, caches cold).
        self.omp_passive_wait = cpu_gemm.omp_waits_passively()
        self.dtype = dtype
        self.sampler = Sampler()
        self.kv_caches = self._allocate_kv_cache()
        self.attention_backend = resolve_attention_backend(attention_backend, self.device)
        if use_cuda_graphs is None:
            use_cuda_graphs = self.device.type == "cuda" and self.attention_backend == "triton"
        self.cuda_graphs: DecodeCudaGraphs | None = None
        if use_cuda_graphs:
            max_blocks_per_seq = cdiv(max_model_len or model_config.max_position_embeddings, block_size)
            # Captured on the first decode-only step, once the model is warm.
            self.cuda_graphs = DecodeCudaGraphs(
                model, self.kv_caches, max_num_seqs, min(max_blocks_per_seq, num_blocks - 1), self.attention_backend
            )
        # Seeded requests keep one generator for their whole life (vLLM: CachedRequestState.generator).
        self.generators: dict[str, torch.Generator] = {}
        self.requests: dict[str, CachedRequestState] = {}
        # Speculative decoding (V1: GPUModelRunner.drafter / rejection_sampler / _draft_token_ids).
        self.speculative_config = speculative_config
        self.drafter: NgramProposer | None = None
        if speculative_config is not None:
            self.drafter = NgramProposer(speculative_config, max_model_len or model_config.max_position_embeddings)
        self.rejection_sampler = RejectionSampler(self.sampler)
        self._draft_token_ids: DraftTokenIds | None = None
        # "ngram_gpu": drafts proposed and placed on this side, inputs built on the model thread.
        self.worker_drafts: WorkerDrafts | None = None
        if speculative_config is not None and speculative_config.use_ngram_gpu():
            self.worker_drafts = WorkerDrafts(self.drafter, speculative_config.num_speculative_tokens)
        # Async scheduling (vLLM: the input batch's prev_sampled_token_ids): the requests the last
        # prepared step samples, and the tokens the last executed step sampled, by request.
        self._last_prepared_sampling: set[str] = set()
        self._last_sampled: dict[str, int] = {}

    def _allocate_kv_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.model_config
        shape = (self.num_blocks, self.block_size, cfg.num_key_value_heads, cfg.head_dim)
        return [
            (
                torch.zeros(shape, dtype=self.dtype, device=self.device),
                torch.zeros(shape, dtype=self.dtype, device=self.device),
            )
            for _ in range(cfg.num_hidden_layers)
        ]

    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput, grammar_output=None) -> ModelRunnerOutput:
        """Run one step: build the flat batch, forward it, sample where a request reached its end.

        Mirrors: vllm.v1.worker.gpu_model_runner:GPUModelRunner.execute_model (vllm 0.33.0) (+ sample_tokens,
        which vLLM 0.33 issues as a separate call). grammar_output: the scheduler's bitmask for the
        step's structured requests, applied to their logits before sampling (vLLM: sample_tokens).
        """
        return self.execute_model_input(self.prepare_model_input(scheduler_output), grammar_output)

    @torch.inference_mode()
    def prepare_model_input(self, scheduler_output: SchedulerOutput) -> ModelInput | StepPlan | None:
        """The host half of execute_model: the runner's request states and the batch's inputs
        (None for an empty step; for "ngram_gpu" a StepPlan, its inputs built on the model thread).
        Reads the scheduler's requests, so the async engine calls it on the scheduling thread, in step order."""
        self._update_states(scheduler_output)
        if scheduler_output.is_empty:
            self._last_prepared_sampling = set()
            if self.worker_drafts is not None:
                self.worker_drafts.note_finished(scheduler_output.finished_req_ids)
            return None
        if self.worker_drafts is not None:
            return self.worker_drafts.plan(scheduler_output, self.requests, self._generator_for)
        model_input = self._prepare_inputs(scheduler_output)
        self._last_prepared_sampling = {model_input.req_ids[i] for i in model_input.sampled_req_indices}
        return model_input

    @torch.inference_mode()
    def execute_model_input(self, model_input: ModelInput | StepPlan | None, grammar_output=None) -> ModelRunnerOutput:
        """The device half of execute_model: placeholders filled, forward, grammar bitmask, sample
        (a Future grammar_output is awaited once the logits are ready: vLLM's sample_tokens).
        Touches only the prepared input and the last step's sampled tokens, so it may run on a worker
        thread while the next step is scheduled; steps must execute in the order they were prepared."""
        if model_input is None:
            self._last_sampled = {}
            return ModelRunnerOutput(req_ids=[], sampled_token_ids=[])
        if isinstance(model_input, StepPlan):
            model_input = self._build_model_input(self.worker_drafts.resolve(model_input), model_input.step)
        forward_start = time.perf_counter()
        for row, req_id in model_input.placeholder_rows:
            model_input.input_ids[row] = self._last_sampled[req_id]
        if self._runs_from_cuda_graph(model_input):
            logits = self.cuda_graphs.run(model_input.input_ids, model_input.positions, model_input.attn_metadata)
        else:
            with cpu_gemm.compute_threads_for(model_input.input_ids.shape[0], self.device, self.omp_passive_wait):
                hidden = self.model(model_input.input_ids, model_input.positions, model_input.attn_metadata, self.kv_caches)
                logits = self.model.compute_logits(hidden[model_input.logits_indices])
        if isinstance(grammar_output, Future):  # filled on the engine thread while the forward ran
            model_input.forward_window = (forward_start, time.perf_counter())
            grammar_output = grammar_output.result()
        if grammar_output is not None:
            sampled_req_ids = [model_input.req_ids[i] for i in model_input.sampled_req_indices]
            num_drafts = [len(d) for d in model_input.spec_drafts] if model_input.spec_drafts else None
            grammar_apply.apply_grammar_bitmask(logits, sampled_req_ids, grammar_output, num_drafts)
        sampled = self._sample(logits, model_input)
        output = self._build_output(model_input, sampled)
        if self.worker_drafts is not None:
            self._draft_token_ids = self.worker_drafts.after_sample(model_input.req_ids, output)
        elif self.drafter is not None:
            self._propose_draft_token_ids(model_input, output)
        return output

    def _runs_from_cuda_graph(self, model_input: ModelInput) -> bool:
        """Decode-only batches (one token, hence one sampled row, per request) that fit a captured graph."""
        num_reqs = len(model_input.requests)
        return (
            self.cuda_graphs is not None
            and model_input.input_ids.shape[0] == num_reqs
            and self.cuda_graphs.can_run(num_reqs, model_input.attn_metadata.block_tables.shape[1])
        )

    def _update_states(self, scheduler_output: SchedulerOutput) -> None:
        """Mirrors: vllm.v1.worker.gpu_model_runner:GPUModelRunner._update_states (vllm 0.33.0)
        Finished requests dropped, new ones added, cached ones updated, a resumed one's table replaced
        (vllm/v1/worker/gpu_model_runner.py:1187-1432 GPUModelRunner._update_states)."""
        for req_id in scheduler_output.finished_req_ids:
            self.requests.pop(req_id, None)
            self.generators.pop(req_id, None)
        for new in scheduler_output.scheduled_new_reqs:
            self.requests[new.req_id] = CachedRequestState(new.request, list(new.block_ids), new.num_computed_tokens)
        cached = scheduler_output.scheduled_cached_reqs
        for req_id, new_block_ids, num_computed in zip(cached.req_ids, cached.new_block_ids, cached.num_computed_tokens):
            state = self.requests.get(req_id)
            if state is None:
                raise ValueError(f"scheduler output sends request {req_id} as cached, but the runner never saw it")
            state.num_computed_tokens = num_computed
            if req_id in cached.resumed_req_ids:
                # Preemption freed the old table; the resumed request's blocks replace it.
                assert new_block_ids is not None, "a resumed request carries its whole block table"
                state.block_ids = list(new_block_ids)
            elif new_block_ids is not None:
                state.block_ids.extend(new_block_ids)

    def _prepare_inputs(self, scheduler_output: SchedulerOutput) -> ModelInput:
        """Flatten the scheduled tokens of all requests into one batch.

        Mirrors: vllm.v1.worker.gpu_model_runner:GPUModelRunner._prepare_inputs (vllm 0.33.0).
        """
        req_ids = [new.req_id for new in scheduler_output.scheduled_new_reqs]
        req_ids += scheduler_output.scheduled_cached_reqs.req_ids
        inputs: list[RequestInput] = []
        for req_id in req_ids:
            state = self.requests[req_id]
            request = state.request
            num_new = scheduler_output.num_scheduled_tokens[req_id]
            num_computed = state.num_computed_tokens
            end = num_computed + num_new
            # Drafts follow the known tokens; the scheduler schedules them only to the end.
            spec = scheduler_output.scheduled_spec_decode_tokens.get(req_id, [])
            # Async scheduling: the last token may be the one the step before this samples (never
            # with drafts here: async speculation ("ngram_gpu") builds its inputs in engine.spec_decode.worker_drafts).
            num_known = request.num_tokens
            placeholder = not spec and req_id in self._last_prepared_sampling and end == num_known + 1
            if num_new < 1 or end > num_known + placeholder + len(spec):
                raise ValueError(
                    f"request {req_id}: scheduled tokens [{num_computed}, {end}) but it has {request.num_tokens} tokens"
                    + (f" and {len(spec)} drafts" if spec else "")
                )
            token_ids = request.all_token_ids[num_computed:] if spec else request.all_token_ids[num_computed: end - placeholder]
            # A chunk that stops short of the known tokens has nothing to sample yet.
            sampled = end >= num_known
            inputs.append(RequestInput(
                request, num_computed, token_ids, spec, state.block_ids, placeholder,
                self._generator_for(request) if sampled else None, sampled,
            ))
        return self._build_model_input(inputs, scheduler_output.step)

    def _build_model_input(self, inputs: list["RequestInput"], step: int) -> ModelInput:
        """The flat batch's tensors from each request's rows (also the async drafts' path)."""
        input_ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        query_start_loc = [0]
        seq_lens: list[int] = []
        block_tables: list[list[int]] = []
        logits_indices: list[int] = []
        sampled_req_indices: list[int] = []
        placeholder_rows: list[tuple[int, str]] = []
        spec_drafts: list[list[int]] = []
        for index, item in enumerate(inputs):
            req_id, block_ids, spec = item.request.request_id, item.block_ids, item.spec
            num_computed = item.num_computed_tokens
            end = num_computed + len(item.token_ids) + item.placeholder + len(spec)
            if end > len(block_ids) * self.block_size:
                raise ValueError(
                    f"request {req_id}: {end} tokens need {cdiv(end, self.block_size)} blocks, "
                    f"scheduler gave {len(block_ids)}"
                )
            # A placeholder draft (-1, vLLM's padding) feeds token 0; it is always rejected.
            input_ids.extend(item.token_ids)
            if item.placeholder:
                placeholder_rows.append((len(input_ids), req_id))
                input_ids.append(-1)
            input_ids.extend(max(t, 0) for t in spec)
            for pos in range(num_computed, end):
                positions.append(pos)
                slot_mapping.append(block_ids[pos // self.block_size] * self.block_size + pos % self.block_size)
            query_start_loc.append(len(input_ids))
            seq_lens.append(end)
            block_tables.append(block_ids)
            if item.sampled:
                # The last known token's row, then one per draft (all of them when there are none).
                logits_indices.extend(range(len(input_ids) - 1 - len(spec), len(input_ids)))
                sampled_req_indices.append(index)
                spec_drafts.append(spec)

        width = max(len(b) for b in block_tables)
        padded_tables = [b + [0] * (width - len(b)) for b in block_tables]
        as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=self.device)  # noqa: E731
        positions_t = as_tensor(positions)
        attn_metadata = AttentionMetadata(
            slot_mapping=as_tensor(slot_mapping),
            query_start_loc=as_tensor(query_start_loc),
            seq_lens=as_tensor(seq_lens),
            block_tables=as_tensor(padded_tables),
            positions=positions_t,
            query_start_loc_cpu=query_start_loc,
            seq_lens_cpu=seq_lens,
            attention_backend=self.attention_backend,
        )
        requests = [item.request for item in inputs]
        return ModelInput(
            req_ids=[r.request_id for r in requests],
            requests=requests,
            input_ids=as_tensor(input_ids),
            positions=positions_t,
            attn_metadata=attn_metadata,
            logits_indices=as_tensor(logits_indices),
            sampled_req_indices=sampled_req_indices,
            placeholder_rows=placeholder_rows,
            generators=[inputs[i].generator for i in sampled_req_indices],
            step=step,
            spec_drafts=spec_drafts if any(spec_drafts) else None,
        )

    def _sample(self, logits: torch.Tensor, model_input: ModelInput) -> list[list[int]]:
        if not model_input.sampled_req_indices:
            return []
        requests = [model_input.requests[i] for i in model_input.sampled_req_indices]
        params = [r.sampling_params for r in requests]
        generators = model_input.generators
        if model_input.spec_drafts is not None:
            # Mirrors: vllm.v1.worker.gpu_model_runner:GPUModelRunner._sample (vllm 0.33.0), its spec branch
            metadata = SpecDecodeMetadata.from_drafts(model_input.spec_drafts, logits.device)
            output_token_ids = self.rejection_sampler(metadata, None, logits, params, generators)
            return RejectionSampler.parse_output(output_token_ids)
        return [[token_id] for token_id in self.sampler.sample(logits, params, generators).tolist()]

    def _generator_for(self, request: Request) -> torch.Generator | None:
        seed = request.sampling_params.seed
        if seed is None:
            return None
        generator = self.generators.get(request.request_id)
        if generator is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
            self.generators[request.request_id] = generator
        return generator

    def _build_output(self, model_input: ModelInput, sampled: list[list[int]]) -> ModelRunnerOutput:
        sampled_token_ids: list[list[int]] = [[] for _ in model_input.req_ids]
        for req_index, token_ids in zip(model_input.sampled_req_indices, sampled, strict=True):
            sampled_token_ids[req_index] = token_ids
        # Async scheduling fills a placeholder with the last token sampled (one per step there).
        self._last_sampled = {model_input.req_ids[i]: t[-1] for i, t in zip(model_input.sampled_req_indices, sampled)}
        return ModelRunnerOutput(req_ids=model_input.req_ids, sampled_token_ids=sampled_token_ids)

    def _propose_draft_token_ids(self, model_input: ModelInput, output: ModelRunnerOutput) -> None:
        """Drafts for the next step, from each request's context including what it sampled now.

        Mirrors: vllm.v1.worker.gpu_model_runner:GPUModelRunner.propose_draft_token_ids (vllm 0.33.0)
        """
        contexts = [r.all_token_ids + sampled for r, sampled in zip(model_input.requests, output.sampled_token_ids)]
        drafts = self.drafter.propose(
            self.speculative_config.num_speculative_tokens, output.sampled_token_ids, contexts
        )
        self._draft_token_ids = DraftTokenIds(req_ids=list(output.req_ids), draft_token_ids=drafts)

    def take_draft_token_ids(self) -> DraftTokenIds | None:
        """The drafts proposed in the last step, once (the engine hands them to the scheduler).

        Mirrors: vllm.v1.worker.gpu_model_runner:GPUModelRunner.take_draft_token_ids (vllm 0.33.0)
        """
        draft_token_ids, self._draft_token_ids = self._draft_token_ids, None
        return draft_token_ids
