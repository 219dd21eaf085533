"""The three things bench/gpu_bench.py times, each a function of (model, prompts, output length).

- our engine core: Scheduler + ModelRunner (Triton paged attention, decode CUDA graphs), driven
  the way LLMEngine.step drives them, minus detokenization (the random-weight model has no
  tokenizer on the device);
- transformers generate() (greedy, dynamic cache);
- transformers with a StaticCache, one decode step captured in a CUDA graph and replayed.

Every runner returns the greedy tokens, so the benchmark can check them against each other.
Kept free of timing policy and printing; bench/gpu_bench.py owns those.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import torch

from engine.config import CacheConfig, SchedulerConfig
from engine.math_utils import cdiv
from engine.model import LlamaConfig, LlamaForCausalLM, stack_hf_weights
from engine.model_runner import ModelRunner
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler

# SmolLM2-135M's shape (config.json of HuggingFaceTB/SmolLM2-135M-Instruct).
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
)
BLOCK_SIZE = 16
# Weights drawn from normal(0, this). At transformers' default 0.02 a 30-layer random model only
# repeats one token, which would make the greedy-token check vacuous; at 0.05 its output varies.
INIT_STD = 0.05


@dataclass
class Run:
    """What one runner did: greedy tokens per request and where the wall time went."""

    tokens: list[list[int]]
    total_s: float
    # Steady-state decode steps (ours: decode-only engine steps; HF graph: replays); empty for generate().
    decode_step_s: list[float] = field(default_factory=list)
    # Ours only: host time of each decode-only step spent in schedule / execute_model / update_from_output.
    phase_s: dict[str, list[float]] = field(default_factory=dict)
    num_steps: int = 0
    scores: torch.Tensor | None = None


def build_models(config: dict, device: torch.device, seed: int = 0) -> tuple[torch.nn.Module, LlamaForCausalLM, LlamaConfig]:
    """A transformers Llama with random weights (float32) and our model holding the very same weights."""
    import transformers

    hf_config = transformers.LlamaConfig(
        **config, bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation="sdpa",
        initializer_range=INIT_STD,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        hf_model = transformers.LlamaForCausalLM(hf_config).eval()
    ours_config = LlamaConfig(**config)
    with torch.device(device):
        ours = LlamaForCausalLM(ours_config).eval()
    # Hugging Face names, with q/k/v and gate/up stacked as our model holds them.
    ours.load_state_dict(stack_hf_weights(hf_model.state_dict()), strict=True)
    return hf_model, ours, ours_config


def to_dtype_keeping_rope_in_float32(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """model.to(dtype), except RoPE inverse frequencies, which stay float32 as from_pretrained leaves them.

    Rounded to bfloat16 they put the rotation of position 200 off by up to ~0.5 rad.
    """
    saved = {
        (module, name): buffer.clone()
        for module in model.modules()
        for name, buffer in module._buffers.items()
        if buffer is not None and "inv_freq" in name
    }
    model.to(dtype)
    for (module, name), buffer in saved.items():
        module._buffers[name] = buffer
    return model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_prompts(batch: int, prompt_len: int, vocab_size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, prompt_len), generator=generator)


# ---------------------------------------------------------------- our engine


class EngineCore:
    """Scheduler + ModelRunner sized for one batch of equal requests; reusable across runs (graphs stay captured)."""

    def __init__(self, model: LlamaForCausalLM, config: LlamaConfig, batch: int, max_model_len: int,
                 cuda_graphs: bool, max_num_batched_tokens: int = 8192) -> None:
        self.batch = batch
        self.max_model_len = max_model_len
        self.max_num_batched_tokens = max_num_batched_tokens
        self.num_blocks = batch * cdiv(max_model_len, BLOCK_SIZE) + 1  # + the null block
        param = next(model.parameters())
        self.runner = ModelRunner(
            model, config, BLOCK_SIZE, self.num_blocks, param.device, param.dtype,
            attention_backend="triton", use_cuda_graphs=cuda_graphs, max_num_seqs=batch, max_model_len=max_model_len,
        )

    def generate(self, prompts: torch.Tensor, output_len: int) -> Run:
        scheduler = Scheduler(
            SchedulerConfig(max_num_seqs=self.batch, max_num_batched_tokens=self.max_num_batched_tokens,
                            max_model_len=self.max_model_len),
            CacheConfig(block_size=BLOCK_SIZE, num_blocks=self.num_blocks),
            self.num_blocks,
        )
        params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
        requests = [Request(f"r{i}", ids, params) for i, ids in enumerate(prompts.tolist())]
        phases: dict[str, list[float]] = {"schedule": [], "execute_model": [], "update": []}
        decode_steps: list[float] = []
        num_steps = 0
        synchronize(self.runner.device)
        start = time.perf_counter()
        for request in requests:
            scheduler.add_request(request)
        while scheduler.has_unfinished_requests():
            t0 = time.perf_counter()
            scheduler_output = scheduler.schedule()
            t1 = time.perf_counter()
            # execute_model returns host token ids, so every step ends synchronized with the GPU.
            runner_output = self.runner.execute_model(scheduler_output)
            t2 = time.perf_counter()
            scheduler.update_from_output(scheduler_output, runner_output)
            t3 = time.perf_counter()
            num_steps += 1
            if scheduler_output.total_num_scheduled_tokens == len(scheduler_output.num_scheduled_tokens):
                decode_steps.append(t3 - t0)
                for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                    phases[name].append(seconds)
        total = time.perf_counter() - start
        return Run([r.output_token_ids for r in requests], total, decode_steps, phases, num_steps)


# ---------------------------------------------------------------- transformers generate()


@torch.inference_mode()
def hf_generate(model: torch.nn.Module, prompts: torch.Tensor, output_len: int, return_scores: bool = False) -> Run:
    """Greedy generate(); return_scores keeps each step's logits [steps, batch, vocab] in Run.scores."""
    device = next(model.parameters()).device
    input_ids = prompts.to(device)
    synchronize(device)
    start = time.perf_counter()
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=output_len,
        do_sample=False,
        pad_token_id=0,
        output_scores=return_scores,
        return_dict_in_generate=True,
    )
    synchronize(device)
    total = time.perf_counter() - start
    tokens = out.sequences[:, prompts.shape[1]:].tolist()
    if any(len(t) != output_len for t in tokens):
        raise RuntimeError("transformers generate() stopped early; the bench expects exactly output_len tokens")
    run = Run(tokens, total, num_steps=output_len)
    if return_scores:
        run.scores = torch.stack(out.scores).float()
    return run


# ---------------------------------------------------------------- transformers StaticCache + CUDA graph


def _static_cache(model: torch.nn.Module, batch: int, max_len: int):
    """StaticCache across transformers versions (4.x takes batch/device/dtype up front, 5.x sizes itself lazily)."""
    from transformers import StaticCache

    accepted = inspect.signature(StaticCache.__init__).parameters
    param = next(model.parameters())
    kwargs = {"config": model.config, "max_cache_len": max_len}
    for name, value in (("max_batch_size", batch), ("batch_size", batch), ("device", param.device), ("dtype", param.dtype)):
        if name in accepted:
            kwargs[name] = value
    return StaticCache(**kwargs)


def _takes_cache_position(model: torch.nn.Module) -> bool:
    # transformers 4.x threads cache_position through the model; 5.x tracks the write offset in the cache.
    return "cache_position" in inspect.signature(model.forward).parameters


@torch.inference_mode()
def hf_static_cuda_graph(model: torch.nn.Module, prompts: torch.Tensor, output_len: int, use_graph: bool = True) -> Run:
    """Prefill eagerly into a StaticCache, run the first decode step eagerly, capture it, replay the rest.

    The decode step reads a 4D additive mask over the whole static cache (so the graph needs no
    mask logic), and each step copies its tokens to the host, as a server must.
    use_graph=False runs every step eagerly (the CPU plumbing check).
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    batch, prompt_len = prompts.shape
    max_len = prompt_len + output_len
    cache = _static_cache(model, batch, max_len)
    with_cache_position = _takes_cache_position(model)
    synchronize(device)
    start = time.perf_counter()

    input_ids = prompts.to(device)
    extra = {"cache_position": torch.arange(prompt_len, device=device)} if with_cache_position else {}
    logits = model(
        input_ids=input_ids,
        attention_mask=torch.ones(batch, prompt_len, dtype=torch.long, device=device),
        position_ids=torch.arange(prompt_len, device=device).expand(batch, -1),
        past_key_values=cache, use_cache=True, **extra,
    ).logits
    next_tokens = logits[:, -1].argmax(-1)
    tokens = [next_tokens.cpu()]

    static_ids = next_tokens[:, None].clone()
    static_pos = torch.full((batch, 1), prompt_len, dtype=torch.long, device=device)
    static_cache_position = torch.full((1,), prompt_len, dtype=torch.long, device=device)
    static_mask = torch.full((batch, 1, 1, max_len), torch.finfo(dtype).min, dtype=dtype, device=device)
    static_mask[..., : prompt_len + 1] = 0
    static_next = torch.empty(batch, dtype=torch.long, device=device)

    def step() -> None:
        extra = {"cache_position": static_cache_position} if with_cache_position else {}
        out = model(input_ids=static_ids, position_ids=static_pos, attention_mask=static_mask,
                    past_key_values=cache, use_cache=True, **extra).logits
        static_next.copy_(out[:, -1].argmax(-1))

    step()  # the first decode step runs eagerly; it also warms up everything the capture records
    tokens.append(static_next.cpu())
    graph = None
    if use_graph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
    decode_steps = []
    for position in range(prompt_len + 1, max_len - 1):
        t0 = time.perf_counter()
        static_ids.copy_(static_next[:, None])
        static_pos.fill_(position)
        static_cache_position.fill_(position)
        static_mask[..., position] = 0
        graph.replay() if graph is not None else step()
        tokens.append(static_next.cpu())
        decode_steps.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    return Run(torch.stack(tokens, 1).tolist(), total, decode_steps, num_steps=output_len)
