"""The compact engine's model side, checked against transformers on the same bundled GGUF.

transformers dequantizes the GGUF to float32 exactly as our loader does, so logits must agree to
float32 noise and greedy generation token for token, whether requests run alone, batched with
prefills and decodes mixed, chunked, or on top of a prefix whose KV blocks are already cached.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest
import torch

from engine.attention import AttentionMetadata
from engine.loader import bundled_model_path, load_model
from engine.math_utils import cdiv
from engine.model_runner import ModelRunner, num_blocks_for_memory
from engine.outputs import CachedRequestData, NewRequestData, SchedulerOutput
from engine.request import Request
from engine.sampling_params import SamplingParams

BLOCK_SIZE = 8
NUM_BLOCKS = 256
MAX_NEW_TOKENS = 16

PROMPTS = [
    "Hi",
    "The capital of France is",
    "Write a haiku about the sea.",
    "def fibonacci(n):\n    ",
    "List three colours of the rainbow and explain why the sky is blue in one sentence.",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker who",
    "Q: What is 12 times 7?\nA:",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. Again:",
]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def gguf_location() -> tuple[str, str]:
    return os.path.split(bundled_model_path())


@pytest.fixture(scope="session")
def oracle(hf_oracle):
    return hf_oracle


@pytest.fixture(scope="session")
def prompt_ids(gguf_location) -> list[list[int]]:
    transformers = pytest.importorskip("transformers")
    directory, name = gguf_location
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    return [tokenizer(p).input_ids for p in PROMPTS]


@pytest.fixture(scope="session")
def ours():
    return load_model(None, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def oracle_greedy(oracle, prompt_ids) -> dict[tuple[int, ...], list[int]]:
    """transformers' greedy continuation of each prompt (and of the prefix-cache prompt below)."""
    prompts = prompt_ids + [prompt_ids[5] + prompt_ids[2]]
    out = {}
    for ids in prompts:
        with torch.no_grad():
            generated = oracle.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                max_new_tokens=MAX_NEW_TOKENS,
            )
        out[tuple(ids)] = generated[0, len(ids):].tolist()
    return out


@pytest.fixture
def runner(ours) -> ModelRunner:
    model, config = ours
    return ModelRunner(model, config, block_size=BLOCK_SIZE, num_blocks=NUM_BLOCKS, device="cpu", dtype=torch.float32)


# ---------------------------------------------------------------- a hand-driven scheduler


@dataclass
class Running:
    request: Request
    block_ids: list[int]
    num_computed: int = 0
    scheduled_before: bool = False
    max_new_tokens: int = MAX_NEW_TOKENS

    @property
    def done(self) -> bool:
        return self.request.num_output_tokens >= self.max_new_tokens


@dataclass
class HandScheduler:
    """Just enough scheduling to drive ModelRunner: fresh blocks per request, optional prefill chunking."""

    runner: ModelRunner
    chunk_size: int | None = None
    next_block: int = 1  # block 0 is the null block
    step: int = 0
    running: list[Running] = field(default_factory=list)

    def add(self, prompt: list[int], params: SamplingParams | None = None, *, cached_blocks: list[int] = (),
            max_new_tokens: int = MAX_NEW_TOKENS) -> Running:
        request = Request(f"req-{len(self.running)}", list(prompt), params or SamplingParams(temperature=0.0))
        seq = Running(request, list(cached_blocks), len(cached_blocks) * BLOCK_SIZE, max_new_tokens=max_new_tokens)
        self.running.append(seq)
        return seq

    def run_step(self) -> None:
        active = [s for s in self.running if not s.done]
        num_scheduled: dict[str, int] = {}
        new_reqs: list[NewRequestData] = []
        cached = CachedRequestData.make_empty()
        for seq in active:
            remaining = seq.request.num_tokens - seq.num_computed
            n = min(remaining, self.chunk_size) if self.chunk_size else remaining
            num_blocks_before = len(seq.block_ids)
            while len(seq.block_ids) * BLOCK_SIZE < seq.num_computed + n:
                seq.block_ids.append(self.next_block)
                self.next_block += 1
            rid = seq.request.request_id
            num_scheduled[rid] = n
            if not seq.scheduled_before:  # the runner gets the whole table once, then only new blocks
                new_reqs.append(NewRequestData(rid, seq.request.prompt_token_ids, seq.request.sampling_params,
                                               list(seq.block_ids), seq.num_computed, seq.request))
            else:
                cached.req_ids.append(rid)
                cached.new_block_ids.append(seq.block_ids[num_blocks_before:] or None)
                cached.num_computed_tokens.append(seq.num_computed)
                cached.num_output_tokens.append(seq.request.num_output_tokens)
        output = self.runner.execute_model(
            SchedulerOutput(
                scheduled_new_reqs=new_reqs,
                scheduled_cached_reqs=cached,
                num_scheduled_tokens=num_scheduled,
                total_num_scheduled_tokens=sum(num_scheduled.values()),
                step=self.step,
            )
        )
        self.step += 1
        by_id = {s.request.request_id: s for s in active}
        assert sorted(output.req_ids) == sorted(by_id)
        for rid, tokens in zip(output.req_ids, output.sampled_token_ids):
            seq = by_id[rid]
            seq.scheduled_before = True
            seq.num_computed += num_scheduled[rid]
            reached_end = seq.num_computed >= seq.request.num_tokens
            assert len(tokens) == (1 if reached_end else 0)
            seq.request.append_output_token_ids(tokens)

    def run_until_done(self) -> None:
        while any(not s.done for s in self.running):
            self.run_step()


def assert_matches_oracle(output: list[int], expected: list[int]) -> None:
    # transformers stops at EOS; our hand loop does not, so compare up to where the oracle stopped.
    assert output[: len(expected)] == expected


# ---------------------------------------------------------------- (1) logits


def test_logits_match_transformers_for_a_flat_batch_of_prompts(ours, oracle, prompt_ids):
    model, config = ours
    prompts = [prompt_ids[1], prompt_ids[3], prompt_ids[5]]
    runner = ModelRunner(model, config, BLOCK_SIZE, 64, "cpu", torch.float32)
    # Three prompts back to back in one flat batch, each in its own (non-contiguous) blocks.
    input_ids, positions, slots, starts, tables = [], [], [], [0], []
    next_block = 1
    for ids in prompts:
        num_blocks = cdiv(len(ids), BLOCK_SIZE)
        blocks = [next_block + 2 * i for i in range(num_blocks)]
        next_block += 2 * num_blocks
        tables.append(blocks)
        input_ids += ids
        positions += range(len(ids))
        slots += [blocks[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(len(ids))]
        starts.append(len(input_ids))
    width = max(map(len, tables))
    metadata = AttentionMetadata(
        slot_mapping=torch.tensor(slots),
        query_start_loc=torch.tensor(starts),
        seq_lens=torch.tensor([len(p) for p in prompts]),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables]),
        positions=torch.tensor(positions),
    )
    with torch.no_grad():
        logits = model.compute_logits(model(torch.tensor(input_ids), torch.tensor(positions), metadata, runner.kv_caches))
        for r, ids in enumerate(prompts):
            expected = oracle(torch.tensor([ids])).logits[0]
            # float32 through 30 layers: oneDNN (our CPU GEMMs) and MKL (transformers') sum in different
            # orders, which moves logits of magnitude ~10 by ~1e-4. A real bug moves them by far more.
            torch.testing.assert_close(logits[starts[r]:starts[r + 1]], expected, atol=5e-4, rtol=1e-4)


def test_loaded_config_reads_the_gguf_metadata(ours):
    _, config = ours
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (30, 576, 9)
    assert (config.num_key_value_heads, config.head_dim, config.vocab_size) == (3, 64, 49152)
    assert config.tie_word_embeddings and config.rope_theta == 100000.0
    assert config.eos_token_id == 2


# ---------------------------------------------------------------- (2) greedy generation


def test_greedy_one_request_at_a_time_matches_transformers(runner, prompt_ids, oracle_greedy):
    for ids in prompt_ids:
        scheduler = HandScheduler(runner)
        seq = scheduler.add(ids)
        scheduler.run_until_done()
        assert_matches_oracle(seq.request.output_token_ids, oracle_greedy[tuple(ids)])


def test_greedy_batched_with_staggered_arrivals_and_chunked_prefill_matches_transformers(
    runner, prompt_ids, oracle_greedy
):
    # A new prompt arrives every step and is prefilled 5 tokens at a time, so most steps mix
    # prefill chunks, chunk ends that sample, and decodes of earlier requests.
    scheduler = HandScheduler(runner, chunk_size=5)
    seqs = []
    for ids in prompt_ids:
        seqs.append(scheduler.add(ids))
        scheduler.run_step()
    scheduler.run_until_done()
    for ids, seq in zip(prompt_ids, seqs):
        assert_matches_oracle(seq.request.output_token_ids, oracle_greedy[tuple(ids)])


def test_greedy_all_prompts_in_one_batch_matches_transformers(runner, prompt_ids, oracle_greedy):
    scheduler = HandScheduler(runner)
    seqs = [scheduler.add(ids) for ids in prompt_ids]
    scheduler.run_until_done()
    for ids, seq in zip(prompt_ids, seqs):
        assert_matches_oracle(seq.request.output_token_ids, oracle_greedy[tuple(ids)])


def test_greedy_on_a_cached_prefix_matches_transformers(runner, prompt_ids, oracle_greedy):
    prefix, suffix = prompt_ids[5], prompt_ids[2]
    assert len(prefix) > 2 * BLOCK_SIZE
    scheduler = HandScheduler(runner)
    first = scheduler.add(prefix, max_new_tokens=1)
    scheduler.run_until_done()
    # Only full blocks of the prompt are reusable, as in vLLM's prefix cache.
    cached_blocks = first.block_ids[: len(prefix) // BLOCK_SIZE]
    blocks_before = scheduler.next_block
    second = scheduler.add(prefix + suffix, cached_blocks=cached_blocks)
    scheduler.run_until_done()
    assert second.block_ids[: len(cached_blocks)] == cached_blocks
    assert scheduler.next_block - blocks_before == len(second.block_ids) - len(cached_blocks)
    assert_matches_oracle(second.request.output_token_ids, oracle_greedy[tuple(prefix + suffix)])


def test_runner_keeps_a_seeded_requests_generator_across_steps(ours):
    model, config = ours
    runs = []
    for _ in range(2):
        runner = ModelRunner(model, config, BLOCK_SIZE, 32, "cpu", torch.float32)
        scheduler = HandScheduler(runner)
        seq = scheduler.add([1, 504, 3458, 282], SamplingParams(temperature=1.0, seed=99), max_new_tokens=6)
        scheduler.run_until_done()
        runs.append(seq.request.output_token_ids)
    assert runs[0] == runs[1]


def _one_request_output(num_scheduled: int, num_computed: int, block_ids: list[int]) -> SchedulerOutput:
    request = Request("r", [1, 2, 3, 4, 5], SamplingParams(temperature=0.0))
    request.num_computed_tokens = num_computed
    return SchedulerOutput(
        scheduled_new_reqs=[NewRequestData.from_request(request, block_ids)],
        scheduled_cached_reqs=CachedRequestData.make_empty(),
        num_scheduled_tokens={"r": num_scheduled}, total_num_scheduled_tokens=num_scheduled,
    )


@pytest.mark.parametrize(
    "num_scheduled, num_computed, block_ids, message",
    [
        (6, 0, [1], "has 5 tokens"),  # more tokens than the request knows
        (3, 3, [1], "has 5 tokens"),  # runs past the end of what is known
        (5, 0, [], "scheduler gave 0"),  # no block for the new KV
    ],
)
def test_runner_rejects_an_inconsistent_scheduler_output(runner, num_scheduled, num_computed, block_ids, message):
    with pytest.raises(ValueError, match=message):
        runner.execute_model(_one_request_output(num_scheduled, num_computed, block_ids))


def test_empty_scheduler_output_runs_nothing(runner):
    empty = SchedulerOutput([], CachedRequestData.make_empty(), {}, 0)
    output = runner.execute_model(empty)
    assert output.req_ids == [] and output.sampled_token_ids == []


# ---------------------------------------------------------------- KV sizing and (4) loader errors


def test_num_blocks_for_memory_counts_k_and_v_of_every_layer(ours):
    _, config = ours
    per_block = 2 * 30 * BLOCK_SIZE * 3 * 64 * 4  # K+V, layers, tokens, kv heads, head dim, float32
    assert num_blocks_for_memory(config, BLOCK_SIZE, 10 * per_block + per_block - 1, torch.float32) == 10
    assert num_blocks_for_memory(config, BLOCK_SIZE, 10 * per_block, torch.bfloat16) == 20
    with pytest.raises(ValueError, match="at least 2"):
        num_blocks_for_memory(config, BLOCK_SIZE, per_block, torch.float32)


def test_missing_model_path_names_the_path(tmp_path):
    missing = tmp_path / "no-such-model.gguf"
    with pytest.raises(FileNotFoundError, match="no-such-model.gguf"):
        load_model(str(missing))


@pytest.mark.parametrize("keep_bytes", [10, 4096, 50_000_000])
def test_truncated_gguf_is_a_clear_value_error(tmp_path, keep_bytes):
    truncated = tmp_path / "truncated.gguf"
    with open(bundled_model_path(), "rb") as source:
        truncated.write_bytes(source.read(keep_bytes))
    with pytest.raises(ValueError, match="truncated|corrupt"):
        load_model(str(truncated))


def test_a_file_that_is_not_gguf_is_a_clear_value_error(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_text("definitely not a model")
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_model(str(bogus))


def test_gguf_of_another_architecture_is_rejected(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="architecture 'gpt2' is not supported"):
        load_model(str(path))


# ---------------------------------------------------------------- Hugging Face safetensors directory


def test_safetensors_directory_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=5000.0, tie_word_embeddings=False,
    )
    reference = transformers.LlamaForCausalLM(hf_config).eval()
    reference.save_pretrained(tmp_path, safe_serialization=True)
    model, config = load_model(str(tmp_path))
    assert not config.tie_word_embeddings and config.rope_theta == 5000.0
    ids = [5, 17, 99, 3, 42, 8, 8, 120, 1]
    runner = ModelRunner(model, config, 4, 8, "cpu", torch.float32)
    metadata = AttentionMetadata(
        slot_mapping=torch.tensor([4 + p for p in range(len(ids))]),  # blocks 1, 2, 3
        query_start_loc=torch.tensor([0, len(ids)]),
        seq_lens=torch.tensor([len(ids)]),
        block_tables=torch.tensor([[1, 2, 3]]),
        positions=torch.arange(len(ids)),
    )
    with torch.no_grad():
        ours = model.compute_logits(model(torch.tensor(ids), torch.arange(len(ids)), metadata, runner.kv_caches))
        expected = reference(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_rope_frequencies_stay_float32_when_the_model_moves_to_bfloat16():
    from engine.model import RotaryEmbedding

    rope = RotaryEmbedding(64, 100000.0)
    exact = rope.inv_freq.clone()
    rope.to(torch.bfloat16)
    assert rope.inv_freq.dtype == torch.float32
    assert torch.equal(rope.inv_freq, exact)
