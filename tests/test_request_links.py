"""A step's links to the requests in its batch (tracer.instrument.request_links): memoized per batch,
they are what looking each request up afresh gives, whatever was registered, cleared or sampled out
since the batch was last seen."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.trace import SpanContext, TraceFlags

from tracer.instrument import request_links
from tracer.instrument.registry import registry
from tracer.traces.schema import LINK_REQUEST, LINK_WAITING

IDS = ["r0", "r1", "r2", "r3"]


def _root(n: int, sampled: bool) -> SpanContext:
    return SpanContext(0x1000 + n, 0x2000 + n, is_remote=False,
                       trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT))


def _fresh(batch: list, kind: str) -> list[tuple]:
    """What to_requests must give: each registered, sampled request's root, in batch order."""
    roots = [registry.get(str(rid)) for rid in batch]
    return [(root, kind, str(rid)) for rid, root in zip(batch, roots) if root is not None and root.trace_flags.sampled]


def _seen(links: list) -> list[tuple]:
    return [(link.context, dict(link.attributes)["servetrace.link"], dict(link.attributes)["gen_ai.request.id"])
            for link in links]


operations = st.lists(st.one_of(
    st.tuples(st.just("register"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("clear")),
    st.tuples(st.just("links"), st.lists(st.sampled_from(IDS), max_size=4), st.sampled_from([LINK_REQUEST, LINK_WAITING])),
), max_size=25)


@settings(max_examples=80, deadline=None)
@given(operations)
def test_batch_links_are_what_a_fresh_lookup_gives(ops):
    registry.clear()
    made = 0
    try:
        for op in ops:
            if op[0] == "register":
                made += 1
                registry.register(IDS[op[1]], _root(made, op[2]))  # a second register of an id keeps the first
            elif op[0] == "clear":
                registry.clear()
            else:
                _, batch, kind = op
                for _ in range(2):  # the second time from the memo
                    assert _seen(request_links.to_requests(batch, kind)) == _fresh(batch, kind)
    finally:
        registry.clear()


def test_a_request_registered_after_its_batch_was_seen_is_linked():
    """The case a memo without the registry's version would get wrong: a batch seen before one of its
    requests had a root keeps linking without it."""
    registry.clear()
    try:
        registry.register("a", _root(1, True))
        assert [ctx for ctx, *_ in _seen(request_links.to_requests(["a", "b"]))] == [_root(1, True)]
        registry.register("b", _root(2, True))
        assert [ctx for ctx, *_ in _seen(request_links.to_requests(["a", "b"]))] == [_root(1, True), _root(2, True)]
        registry.clear()
        assert request_links.to_requests(["a", "b"]) == []
    finally:
        registry.clear()
