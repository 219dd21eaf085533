"""Structured output (issue 22) beyond one constrained request a step: jump-forward (SGLang's earlier
design, retokenized at the boundary), the grammar's rollback, speculation with grammars (drafts
validated, 1 + k mask rows), the mask filled while the forward pass runs, and SGLang's loop."""
from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch
from hypothesis import given, settings, strategies as st

from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from engine.structured_output import StructuredOutputsParams
from engine.structured_output.params import get_structured_output_key
from tests.test_server import shared_engine
from tests.test_structured_output import CHOICES, MAX_TOKENS, REGEX, SCHEMAS, messages


# -- jump-forward and rollback ------------------------------------------------------------------

def test_jump_forward_keeps_outputs_valid_and_saves_forward_passes():
    engine = shared_engine()
    items = [s for s in SCHEMAS if s["name"] in ("mixed_types", "nested_address", "const_version")]
    passes: dict[str, int] = {}

    def count(out) -> None:
        if out.new_token_ids:  # one forward pass computed this request's tokens and sampled for it
            passes[out.request_id] = passes.get(out.request_id, 0) + 1

    engine.structured_output_manager.jump_forward = True  # --jump-forward on the shared engine, for this test only
    try:
        outputs = engine.generate(
            [engine.render(messages=messages(s["prompt"])) for s in items],
            [SamplingParams(temperature=0, max_tokens=MAX_TOKENS,
                            structured_outputs=StructuredOutputsParams(json=s["schema"], disable_any_whitespace=True)) for s in items],
            on_output=count,
        )
    finally:
        engine.structured_output_manager.jump_forward = False
    for item, out in zip(items, outputs):
        assert out.finish_reason == "stop"
        jsonschema.validate(json.loads(out.text), item["schema"])
        # Key names, quotes and the const are forced: far fewer forward passes than tokens.
        assert passes[out.request_id] < len(out.output_token_ids) / 1.5, (passes[out.request_id], len(out.output_token_ids))


@pytest.fixture(scope="module")
def points_grammar():
    engine = shared_engine()
    backend = engine.structured_output_manager.backend
    schema = next(s["schema"] for s in SCHEMAS if s["name"] == "array_of_objects")
    kind, spec = get_structured_output_key(StructuredOutputsParams(json=schema))
    return backend, backend.compile(kind, spec, True), engine.tokenizer.encode


def _bitmask(backend, grammar) -> torch.Tensor:
    bitmask = backend.allocate_token_bitmask(1)
    grammar.fill_bitmask(bitmask, 0)
    return bitmask


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_rollback_returns_the_grammar_to_where_it_was(points_grammar, data):
    """Speculative decoding's contract: accept k tokens, roll back j of them, and the grammar
    allows exactly what it allowed after k - j (the bitmask is the state the sampler sees)."""
    backend, ctx, encode = points_grammar
    grammar = backend.new_grammar(ctx)
    tokens = encode('{"points":[{"x":1,"y":2},{"x":3,"y":4}]}')
    k = data.draw(st.integers(1, len(tokens)), label="accepted")
    j = data.draw(st.integers(0, k), label="rolled back")
    expected_grammar = backend.new_grammar(ctx)
    assert expected_grammar.accept_tokens("r", tokens[: k - j])
    assert grammar.accept_tokens("r", tokens[:k])
    grammar.rollback(j)
    assert torch.equal(_bitmask(backend, grammar), _bitmask(backend, expected_grammar))
    assert grammar.num_processed_tokens == k - j and grammar.is_terminated() == expected_grammar.is_terminated()


# -- with speculation: drafts validated, 1 + k rows per request, rollback ------------------------

COPY_JSON = '{"name":"Alice","address":{"city":"Paris","zip":"75001"}}'
SPEC_CASES = [  # copy-heavy prompts, so that prompt lookup proposes drafts the verifier accepts
    ("json", f"Copy the JSON exactly.\nJSON: {COPY_JSON}\nCopy: {COPY_JSON}\nJSON: {COPY_JSON}\nCopy: ",
     StructuredOutputsParams(json=next(s["schema"] for s in SCHEMAS if s["name"] == "nested_address"), disable_any_whitespace=True)),
    ("regex", "Codes: 123-abc 123-abc 123-abc 123-abc 123-",
     StructuredOutputsParams(regex=r"[0-9]{3}-[a-z]{2,4}( [0-9]{3}-[a-z]{2,4}){0,3}")),
    ("choice", "Is the sky blue? yes or no? maybe. Is the sky blue? yes or no? maybe. Answer:",
     StructuredOutputsParams(choice=["yes or no", "maybe not", "yes or no? maybe"])),
]


@pytest.fixture(scope="module")
def spec_engine():
    """A speculating engine (n-gram, k = 4) over the same model, fp32 as the shared engine."""
    from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, SpeculativeConfig
    from engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(
        model=ModelConfig(dtype="float32"), cache=CacheConfig(block_size=16, num_blocks=200),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=512, max_model_len=512),
        speculative=SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=2, prompt_lookup_max=4),
    ))


def test_constrained_greedy_with_speculation_equals_it_without(spec_engine):
    """JSON schema, regex and choice in one batch: the same tokens with drafts verified under 1 + k
    grammar rows per request as without speculation (which equals transformers + xgrammar, above)."""
    params = [SamplingParams(temperature=0, max_tokens=MAX_TOKENS, structured_outputs=p) for _, _, p in SPEC_CASES]
    prompts = [prompt for _, prompt, _ in SPEC_CASES]
    stats = spec_engine.scheduler.spec_decoding_stats
    accepted_before = stats.num_accepted_tokens
    with_spec = spec_engine.generate(prompts, params)
    without = shared_engine().generate(prompts, params)
    for (name, _, _), got, want in zip(SPEC_CASES, with_spec, without):
        assert (got.output_token_ids, got.finish_reason) == (want.output_token_ids, want.finish_reason), name
        assert got.finish_reason == "stop", (name, got.text)
    jsonschema.validate(json.loads(with_spec[0].text), SPEC_CASES[0][2].json)
    assert re.fullmatch(SPEC_CASES[1][2].regex, with_spec[1].text)
    assert with_spec[2].text in SPEC_CASES[2][2].choice
    assert stats.num_accepted_tokens - accepted_before >= 20, "the copy-heavy prompts should accept drafts"
    assert spec_engine.scheduler.kv_cache_manager.get_num_free_blocks() == 200 - 1


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_each_draft_row_is_the_grammar_after_the_drafts_before_it(points_grammar, data):
    """grammar_bitmask with drafts: row i of a request's block masks as the grammar does after its
    first i drafts; a -1 placeholder leaves its later rows all-allowed; the grammar is where it was after."""
    from engine.structured_output.manager import StructuredOutputManager

    backend, ctx, encode = points_grammar
    tokens = encode('{"points":[{"x":1,"y":2},{"x":3,"y":4}]}')
    k = 4
    start = data.draw(st.integers(0, len(tokens) - 1), label="tokens already accepted")
    drafts = tokens[start + 1: start + 1 + data.draw(st.integers(0, k), label="drafts")]
    if drafts and data.draw(st.booleans(), label="padded"):
        drafts = drafts[:-1] + [-1]
    manager = StructuredOutputManager(None, backend.vocab_size, max_num_seqs=2, max_num_spec_tokens=k)
    manager._backend = backend
    request = Request(request_id="r", prompt_token_ids=[1], sampling_params=SamplingParams(
        structured_outputs=StructuredOutputsParams(regex="a")), eos_token_id=None, arrival_time=0.0)
    request.structured_output_request.grammar = grammar = backend.new_grammar(ctx)
    assert grammar.accept_tokens("r", tokens[:start + 1])
    before = _bitmask(backend, grammar)
    output = manager.grammar_bitmask({"r": request}, ["r"], {"r": drafts})
    assert output.grammar_bitmask.shape[0] == 1 + k
    valid = [t for t in drafts if t != -1]
    for i in range(len(drafts) + 1):
        if i > len(valid):  # past the placeholder: never accepted, so unconstrained
            assert bool((output.grammar_bitmask[i] == -1).all())
            continue
        expected = backend.new_grammar(ctx)
        assert expected.accept_tokens("r", tokens[:start + 1] + valid[:i])
        assert torch.equal(output.grammar_bitmask[i:i + 1], _bitmask(backend, expected)), i
    assert output.num_acceptable_drafts == [len(valid)]
    assert torch.equal(_bitmask(backend, grammar), before) and grammar.num_processed_tokens == start + 1  # rolled back


def test_drafts_are_cut_at_the_first_token_the_grammar_refuses():
    """Scheduler.update_draft_token_ids keeps a structured request's drafts up to the first its
    grammar refuses (vLLM: StructuredOutputManager.validate_tokens); the grammar does not move."""
    from engine.outputs import DraftTokenIds
    from engine.spec_decode.scheduling import update_draft_token_ids

    engine = shared_engine()
    manager = engine.structured_output_manager
    request = Request(request_id="draft", prompt_token_ids=[1], sampling_params=SamplingParams(
        structured_outputs=StructuredOutputsParams(regex=r"[0-9]{3}-[a-z]{2}")), eos_token_id=None, arrival_time=0.0)
    manager.grammar_init(request)
    while not request.structured_output_request.is_grammar_ready:
        manager.wait_for_compiles(timeout=1.0)
    encode = engine.tokenizer.encode
    digits, letters = encode("123"), encode("-ab")
    drafts = digits + encode("x") + letters  # "x" cannot follow the digits
    update_draft_token_ids({"draft": request}, DraftTokenIds(["draft"], [drafts]), manager)
    assert request.spec_token_ids == digits
    update_draft_token_ids({"draft": request}, DraftTokenIds(["draft"], [digits + letters]), manager)
    assert request.spec_token_ids == digits + letters
    assert request.structured_output_request.grammar.num_processed_tokens == 0


def test_the_mask_is_filled_while_the_forward_pass_runs():
    """vLLM 0.33's step order (core.py:667-697): the forward starts, then the scheduler fills the
    bitmask, then sampling applies it. The fill waits here until the forward has started on the
    model thread: filled before it (the old order), the forward would never start and this fails."""
    import threading

    engine = shared_engine()
    forward_started, seen = threading.Event(), []
    model, scheduler = engine.model_runner.model, engine.scheduler
    original_fill = scheduler.get_grammar_bitmask

    def forward(*args, **kwargs):
        forward_started.set()
        return type(model).forward(model, *args, **kwargs)

    def fill(scheduler_output):
        seen.append((threading.current_thread() is threading.main_thread(), forward_started.wait(timeout=10)))
        forward_started.clear()
        return original_fill(scheduler_output)

    model.forward, scheduler.get_grammar_bitmask = forward, fill
    times_before = len(engine.overlapped_step.times)
    try:
        params = SamplingParams(temperature=0, max_tokens=12, structured_outputs=StructuredOutputsParams(regex=REGEX))
        out = engine.generate(["A serial number:"], [params])[0]
    finally:
        del model.forward, scheduler.get_grammar_bitmask
    assert re.fullmatch(REGEX, out.text), out.text
    assert seen and all(on_engine_thread and started for on_engine_thread, started in seen), seen
    assert len(engine.overlapped_step.times) - times_before == len(seen)  # fill / forward / overlap per step


def test_jump_forward_retokenizes_the_boundary_as_sglang_did(points_grammar):
    """SGLang 0.4.3.post2's jump_forward_and_retokenize: output text + forced string tokenized again,
    the tokens up to the first change kept, the grammar rolled back there and advanced over the new
    ones. Only tokens not yet computed or streamed (num_rewritable) may change."""
    from engine.structured_output.jump_forward import jump_forward_and_retokenize

    backend, ctx, encode = points_grammar
    decode = shared_engine().tokenizer.decode
    forced = '"points":[{"x":'
    for num_rewritable in (1, 0):
        grammar = backend.new_grammar(ctx)
        output = encode("{")
        assert grammar.accept_tokens("r", output)
        jump = jump_forward_and_retokenize(grammar, output, num_rewritable, decode, encode, max_new_tokens=64)
        new_output = output[: len(output) - jump.num_replaced] + jump.token_ids
        assert decode(new_output) == "{" + forced
        if num_rewritable:  # '{' + '"' fuse into one token, as tokenizing the whole text gives
            assert jump.num_replaced == 1 and new_output == encode("{" + forced)
        else:  # the sampled '{' was computed already: kept, and only the string is tokenized after it
            assert jump.num_replaced == 0 and new_output == output + encode(forced)
        expected = backend.new_grammar(ctx)
        assert expected.accept_tokens("r", new_output)
        assert torch.equal(_bitmask(backend, grammar), _bitmask(backend, expected))
        assert grammar.num_processed_tokens == len(new_output)


# -- SGLang's loop (cache_mode sglang): the grammar queue, the mask, the FSM advanced per token --

def test_sglang_mode_constrains_as_the_vllm_loop_does():
    """cache_mode "sglang" (once a 400): a constrained request waits in the grammar queue until its
    grammar compiles, is masked one row per sampling request and finishes when its grammar
    terminates; greedy, fp32, the same tokens as the vLLM loop for JSON schema, regex and choice."""
    from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine

    engine = LLMEngine(EngineConfig(
        model=ModelConfig(dtype="float32"), cache=CacheConfig(block_size=16, num_blocks=200),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=512, max_model_len=512, cache_mode="sglang"),
    ))
    cases = [(s["prompt"], StructuredOutputsParams(json=s["schema"], disable_any_whitespace=True))
             for s in SCHEMAS if s["name"] == "nested_address"]
    cases += [("A serial number:", StructuredOutputsParams(regex=REGEX)), ("Is the sky blue?", StructuredOutputsParams(choice=CHOICES))]
    prompts = [engine.render(messages=messages(prompt)) for prompt, _ in cases]
    params = [SamplingParams(temperature=0, max_tokens=MAX_TOKENS, structured_outputs=p) for _, p in cases]
    request = engine.add_request("queued", prompts[0], params[0])
    assert request.status == RequestStatus.WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR
    assert engine.scheduler.grammar_queue.queue and not engine.scheduler.waiting_queue  # not in the waiting queue yet
    engine.abort_request("queued")
    assert not engine.scheduler.grammar_queue.queue
    got = engine.generate(prompts, params)
    want = shared_engine().generate(prompts, params)
    for (_, p), g, w in zip(cases, got, want):
        assert (g.output_token_ids, g.finish_reason) == (w.output_token_ids, w.finish_reason), p
        assert g.finish_reason == "stop"
    assert engine.scheduler.num_free_blocks() == 200 - 1
