"""`servetrace explain` names salt-or-adapter: a cache salt keeps an identical prompt apart in vLLM 0.33's
real Scheduler, and the trace tells two salts apart by their hash domains alone, never writing a salt."""
from __future__ import annotations

import json

from tests.test_explain import BASE, BLOCK
from tracer.traces.explain_cache import explain_cache
from tracer.traces.request_steps import read_timeline
from tracer.traces.trace_file import read_trace_file


def vllm_salted(tmp_path, requests: list[tuple[str, list[int], str | None]]):
    """(id, prompt, cache salt) one after another through vLLM 0.33's real Scheduler, traced."""
    from tests.test_tracer_vllm import make_scheduler
    from tracer.instrument import tracing
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.request import Request

    path = tmp_path / "salt.jsonl"
    scheduler = make_scheduler(tmp_path, num_blocks=64)
    with tracing.traced("vllm", path):
        init_none_hash(sha256)
        hasher = get_request_block_hasher(BLOCK, sha256)
        for rid, prompt, salt in requests:
            scheduler.add_request(Request(request_id=rid, prompt_token_ids=prompt, sampling_params=SamplingParams(max_tokens=1, ignore_eos=True),
                                          pooling_params=None, block_hasher=hasher, cache_salt=salt))
            while scheduler.has_unfinished_requests():
                so = scheduler.schedule()
                ids = list(so.num_scheduled_tokens)
                scheduler.update_from_output(so, ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                                                                   sampled_token_ids=[[7] for _ in ids], logprobs=None,
                                                                   prompt_logprobs_dict={}, pooler_output=[]))
    return path, read_timeline(read_trace_file(path).spans)


def test_a_salted_request_misses_an_identical_prompt_because_its_hash_domain_differs(tmp_path, monkeypatch):
    """vLLM mixes the cache salt into the first block's hash (kv_cache_utils.generate_block_hash_extra_keys)."""
    monkeypatch.setenv("SERVETRACE_CAPTURE_CONTENT", "1")
    _, timeline = vllm_salted(tmp_path, [("plain", BASE, None), ("salted", BASE, "tenant-7")])
    salted = explain_cache(timeline, timeline.find("salted"))
    assert salted.reason == "salt-or-adapter", salted.evidence
    assert "salted:" in salted.evidence and "tenant-7" not in json.dumps(salted.to_json())


SALTS = [("salt-a", BASE, "tenant-7"), ("salt-b", BASE, "tenant-8"), ("salt-a-again", BASE, "tenant-7"),
         ("plain", BASE, None), ("other", list(range(3000, 3040)), "tenant-9")]


def test_two_salts_on_one_prompt_are_told_apart_by_their_domains_without_content_capture(tmp_path, monkeypatch):
    """Without content capture a salted request's block hashes differ from the first block on, whatever
    its tokens (the salt is in block 0's hash, every later hash chains to it: kv_cache_utils.py:637-675,
    707-737). The hash domain records a digest of the salt (never the salt) and the enqueue a hash of the
    first block's tokens alone: another salt on the same prompt is salt-or-adapter, the same salt again
    hits, another prompt is never-cached."""
    monkeypatch.delenv("SERVETRACE_CAPTURE_CONTENT", raising=False)
    path, timeline = vllm_salted(tmp_path, SALTS)
    assert all(life.prompt_token_ids is None for life in timeline.requests)
    domains = {life.name: life.hash_domain for life in timeline.requests}
    assert domains["salt-a"] == domains["salt-a-again"] != domains["salt-b"] and domains["plain"] is None
    assert all(domains[name].startswith("salted:") for name in ("salt-a", "salt-b", "other"))
    assert "tenant" not in path.read_text()
    explained = {life.name: explain_cache(timeline, life) for life in timeline.requests}
    assert {name: miss.reason for name, miss in explained.items()} == {
        "salt-a": "never-cached", "salt-b": "salt-or-adapter", "salt-a-again": "partial-block",
        "plain": "salt-or-adapter", "other": "never-cached"}, {n: m.evidence for n, m in explained.items()}
    assert explained["salt-b"].details["other"] == "salt-a" and "(by hash)" in explained["salt-b"].evidence
    assert explained["plain"].details["other"] == "salt-a-again"


def test_a_domain_without_the_salts_digest_cannot_tell_two_salts_apart(tmp_path, monkeypatch):
    """Planted: the bare 'salted' domain of before. Two salts look like one domain, so salt-b's miss
    of salt-a's identical prompt is never-cached: the test above catches it."""
    from tracer.instrument.extractors import vllm as vllm_extractors

    monkeypatch.delenv("SERVETRACE_CAPTURE_CONTENT", raising=False)
    monkeypatch.setattr(vllm_extractors, "_hash_domain", lambda request: "salted" if request.cache_salt else None)
    _, timeline = vllm_salted(tmp_path, SALTS[:2])
    assert explain_cache(timeline, timeline.find("salt-b")).reason == "never-cached"
