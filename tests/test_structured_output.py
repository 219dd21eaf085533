"""Structured output (issue 22): JSON schema, regex and choice constraints, through the real HTTP server.

The 20 schemas of tracer/labs/data/structured_output_schemas.json (the lab's package data) go in at once, each twice (streamed and
not) so the whole set is one engine run; greedy, so both answers must be the same text, and that
text must parse and validate. The engine's constrained greedy output must equal transformers'
greedy output under xgrammar's own logits processor (xgrammar.contrib.hf), token for token.
"""
from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import openai
import pytest
import torch
import xgrammar as xgr
from xgrammar.contrib.hf import LogitsProcessor

from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from engine.structured_output import StructuredOutputsParams
from tests.test_server import NUM_BLOCKS, RunningServer, post_raw, shared_engine
from tracer.labs.structured_output_lab import load_schemas

SCHEMAS = load_schemas()
MAX_TOKENS = 40  # the longest greedy answer of the 20 is 35 tokens
REGEX = r"[0-9]{3}-[a-z]{2,4}"
CHOICES = ["yes", "no", "maybe"]
RESPONSE_FORMAT_SCHEMAS = ["person", "enum_and_number"]


@pytest.fixture(scope="module")
def server():
    running = RunningServer(shared_engine()).start()
    yield running
    running.stop()
    assert running.num_free_blocks() == NUM_BLOCKS - 1


@pytest.fixture(scope="module")
def model(server) -> str:
    return server.app.state.serving.served_model_name


def messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


async def _chat(client: openai.AsyncOpenAI, model: str, stream: bool, **kwargs) -> tuple[str, str | None]:
    if not stream:
        response = await client.chat.completions.create(model=model, temperature=0, **kwargs)
        return response.choices[0].message.content, response.choices[0].finish_reason
    text, finish = "", None
    async for chunk in await client.chat.completions.create(model=model, temperature=0, stream=True, **kwargs):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return text, finish


async def _completion(client: openai.AsyncOpenAI, model: str, stream: bool, **kwargs) -> tuple[str, str | None]:
    if not stream:
        response = await client.completions.create(model=model, temperature=0, **kwargs)
        return response.choices[0].text, response.choices[0].finish_reason
    text, finish = "", None
    async for chunk in await client.completions.create(model=model, temperature=0, stream=True, **kwargs):
        for choice in chunk.choices:
            text += choice.text
            finish = choice.finish_reason or finish
    return text, finish


@pytest.fixture(scope="module")
def answers(server, model):
    """Every constrained request of this module, sent at once so the engine batches them."""

    async def run():
        client = server.async_client(timeout=600)
        calls = {}
        for item in SCHEMAS:
            name, schema = item["name"], item["schema"]
            for stream in (False, True):
                calls[(name, stream)] = _chat(client, model, stream, messages=messages(item["prompt"]), max_tokens=MAX_TOKENS,
                                              extra_body={"structured_outputs": {"json": schema, "disable_any_whitespace": True}})
        # OpenAI's response_format, on both routes (any whitespace between tokens, as vLLM's default).
        for name in RESPONSE_FORMAT_SCHEMAS:
            item = next(s for s in SCHEMAS if s["name"] == name)
            response_format = {"type": "json_schema", "json_schema": {"name": name, "schema": item["schema"]}}
            calls[("response_format_chat", name)] = _chat(client, model, False, messages=messages(item["prompt"]),
                                                          max_tokens=64, response_format=response_format)
            calls[("response_format_completion", name)] = _completion(client, model, False, prompt=item["prompt"] + ":",
                                                                      max_tokens=64, extra_body={"response_format": response_format})
        for stream in (False, True):
            calls[("regex", stream)] = _completion(client, model, stream, prompt="A serial number:", max_tokens=12,
                                                   extra_body={"structured_outputs": {"regex": REGEX}})
            calls[("choice", stream)] = _chat(client, model, stream, messages=messages("Is the sky blue?"), max_tokens=8,
                                              extra_body={"structured_outputs": {"choice": CHOICES}})
        calls[("json_object", False)] = _completion(client, model, False, prompt="A JSON object describing a cat:",
                                                    max_tokens=48, extra_body={"response_format": {"type": "json_object"}})
        results = await asyncio.gather(*calls.values())
        await client.close()
        return dict(zip(calls, results))

    return asyncio.run(run())


@pytest.mark.parametrize("item", SCHEMAS, ids=[s["name"] for s in SCHEMAS])
def test_each_schema_gives_valid_json_streamed_and_not(answers, item):
    text, finish = answers[(item["name"], False)]
    streamed, streamed_finish = answers[(item["name"], True)]
    assert finish == "stop", (text, finish)
    jsonschema.validate(json.loads(text), item["schema"])
    assert (streamed, streamed_finish) == (text, finish)  # greedy: the stream is the same answer


@pytest.mark.parametrize("route", ["response_format_chat", "response_format_completion"])
def test_response_format_json_schema_on_both_routes(answers, route):
    for name in RESPONSE_FORMAT_SCHEMAS:
        text, finish = answers[(route, name)]
        schema = next(s["schema"] for s in SCHEMAS if s["name"] == name)
        assert finish == "stop", (text, finish)
        jsonschema.validate(json.loads(text), schema)


def test_regex_and_choice_outputs_match(answers):
    for stream in (False, True):
        text, finish = answers[("regex", stream)]
        assert re.fullmatch(REGEX, text) and finish == "stop", text
        text, finish = answers[("choice", stream)]
        assert text in CHOICES and finish == "stop", text


def test_json_object_is_a_json_object(answers):
    text, finish = answers[("json_object", False)]
    if finish == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut off by max_tokens: still the start of one
        assert finish == "length" and text.lstrip().startswith("{")


@pytest.mark.parametrize("body, message", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}},
     "Failed to transform json schema"),
    ({"structured_outputs": {"json": "{not json"}}, "Invalid JSON grammar"),
    ({"structured_outputs": {"regex": "(unclosed"}}, "Failed to transform regex"),
    ({"structured_outputs": {"choice": []}}, "cannot be an empty list"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "only use one kind"),
    ({"response_format": {"type": "json_schema"}}, "json_schema"),
])
@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_bad_constraints_are_clear_400s(server, route, body, message):
    prompt = {"prompt": "Hi"} if route == "/v1/completions" else {"messages": messages("Hi")}
    status, reply = post_raw(server.port, route, json.dumps({**prompt, "max_tokens": 4, **body}).encode())
    assert status == 400, reply
    assert message in reply["error"]["message"], reply
    assert reply["error"]["type"] == "BadRequestError"


def test_a_constraint_cut_by_max_tokens_finishes_with_length():
    engine = shared_engine()
    schema = next(s for s in SCHEMAS if s["name"] == "mixed_types")
    params = SamplingParams(temperature=0, max_tokens=5, structured_outputs=StructuredOutputsParams(json=schema["schema"]))
    request = _run_one(engine, "A product listing as JSON", params)
    assert request.get_finish_reason() == "length" and request.num_output_tokens == 5
    assert not request.structured_output_request.is_complete
    params = SamplingParams(temperature=0, max_tokens=8, structured_outputs=StructuredOutputsParams(choice=CHOICES))
    assert _run_one(engine, "Is the sky blue? Answer:", params).structured_output_request.is_complete


def _run_one(engine, prompt: str, params: SamplingParams) -> Request:
    request = engine.add_request(None, engine.render(prompt), params)
    assert request.status == RequestStatus.WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR
    while engine.has_unfinished_requests():
        engine.step()
    return request


# -- the oracle: transformers with xgrammar's own logits processor ------------------------------

ORACLE_CASES = [("nested_address", None), ("regex", REGEX), ("choice", CHOICES)]  # JSON (the longest answer), regex, choice


def _params(name: str, spec) -> StructuredOutputsParams:
    if name == "regex":
        return StructuredOutputsParams(regex=spec)
    if name == "choice":
        return StructuredOutputsParams(choice=spec)
    return StructuredOutputsParams(json=next(s["schema"] for s in SCHEMAS if s["name"] == name), disable_any_whitespace=True)


def _oracle_grammar(compiler: xgr.GrammarCompiler, name: str, spec) -> xgr.CompiledGrammar:
    if name == "regex":
        return compiler.compile_regex(spec)
    if name == "choice":
        return compiler.compile_grammar('root ::= ' + ' | '.join(f'"{c}"' for c in spec))
    schema = next(s["schema"] for s in SCHEMAS if s["name"] == name)
    return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))


def test_constrained_greedy_equals_transformers_with_xgrammar(hf_oracle):
    engine = shared_engine()
    prompts = {name: engine.render(messages=messages(next((s["prompt"] for s in SCHEMAS if s["name"] == name), "A code:")))
               for name, _ in ORACLE_CASES}
    outputs = engine.generate([prompts[name] for name, _ in ORACLE_CASES],
                              [SamplingParams(temperature=0, max_tokens=MAX_TOKENS, structured_outputs=_params(name, spec))
                               for name, spec in ORACLE_CASES])
    info = xgr.TokenizerInfo.from_huggingface(engine.tokenizer.hf, vocab_size=engine.model_config.vocab_size,
                                              stop_token_ids=[engine.eos_token_id])
    compiler = xgr.GrammarCompiler(info)
    for (name, spec), output in zip(ORACLE_CASES, outputs):
        ids = prompts[name]
        with torch.no_grad():
            out = hf_oracle.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
                max_new_tokens=MAX_TOKENS, pad_token_id=engine.eos_token_id,
                logits_processor=[LogitsProcessor(_oracle_grammar(compiler, name, spec))],
            )
        assert output.output_token_ids == out[0, len(ids):].tolist(), name


# -- traced: the grammar.* hops and their attributes --------------------------------------------

def test_traced_spans_carry_kind_compile_cache_hit_mask_and_completeness(tmp_path):
    from tracer.instrument import tracing
    from tracer.traces.trace_file import read_trace_file

    engine = shared_engine()
    regex = r"[a-f]{4}-[0-9]{3}"  # used by no other test: its first compile misses the cache
    path = tmp_path / "trace.jsonl"
    with tracing.traced("mini", path):
        params = [SamplingParams(temperature=0, max_tokens=12, structured_outputs=StructuredOutputsParams(regex=regex)),
                  SamplingParams(temperature=0, max_tokens=3, structured_outputs=StructuredOutputsParams(regex=regex))]
        first = engine.generate(["A serial number:"], params[:1])[0]
        second = engine.generate(["Another serial number:"], params[1:])[0]
    trace = read_trace_file(path)
    compiles = {s.request_id: s.attributes for s in trace.named("grammar.compile")}
    assert compiles[first.request_id]["servetrace.grammar.kind"] == "regex"
    assert compiles[first.request_id]["servetrace.grammar.cache_hit"] is False
    assert compiles[second.request_id]["servetrace.grammar.cache_hit"] is True
    assert all(a["servetrace.grammar.compile_ms"] >= 0 for a in compiles.values())
    fills = trace.named("grammar.bitmask_fill")
    assert fills and all(0 < s.attributes["servetrace.grammar.masked_fraction"] <= 1 for s in fills)
    assert len(trace.named("grammar.bitmask_apply")) == len(fills)  # every filled mask was applied
    frees = {s.request_id: s.attributes for s in trace.named("kv.free") if "servetrace.grammar.complete" in s.attributes}
    assert frees[first.request_id]["servetrace.grammar.complete"] is True and first.finish_reason == "stop"
    assert frees[second.request_id]["servetrace.grammar.complete"] is False and second.finish_reason == "length"


# -- the CLI: servetrace generate --json-schema FILE | --regex R | --choice a,b,c ---------------

def test_generate_flags_become_the_engine_constraint(tmp_path):
    from tracer.cli import build_parser
    from tracer.commands.generate import sampling_params_from_args

    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMAS[0]["schema"]))
    parse = build_parser().parse_args
    assert sampling_params_from_args(parse(["generate", "p", "--json-schema", str(schema_file)])).structured_outputs.json == SCHEMAS[0]["schema"]
    assert sampling_params_from_args(parse(["generate", "p", "--regex", REGEX])).structured_outputs.regex == REGEX
    assert sampling_params_from_args(parse(["generate", "p", "--choice", "yes,no,maybe"])).structured_outputs.choice == CHOICES
    assert sampling_params_from_args(parse(["generate", "p"])).structured_outputs is None
    assert parse(["generate", "p", "--jump-forward"]).jump_forward is True
    from tracer.commands._engine_options import engine_config_from_args

    with pytest.raises(ValueError, match="--cache-mode sglang does not jump"):  # refused, not silently ignored
        engine_config_from_args(parse(["generate", "p", "--jump-forward", "--cache-mode", "sglang"]))
    with pytest.raises(ValueError, match="Failed to transform regex"):
        sampling_params_from_args(parse(["generate", "p", "--regex", "(unclosed"]))
    with pytest.raises(ValueError, match="empty list"):
        sampling_params_from_args(parse(["generate", "p", "--choice", ","]))
    schema_file.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        sampling_params_from_args(parse(["generate", "p", "--json-schema", str(schema_file)]))
