"""The links a step's spans carry to the requests in its batch (tracer.instrument.spans).

A request is in the batch of every step it runs in, and its step, schedule and detokenize spans all
link to it: one Link object per (request, kind) serves them all while the request's root is the same
(the SDK only reads a Link; its attributes are one frozen mapping, lean_span.frozen_attributes).
"""
from __future__ import annotations

from opentelemetry.trace import Link

from tracer.instrument import lean_span
from tracer.instrument.registry import registry
from tracer.traces.schema import LINK_KIND, LINK_REQUEST, REQUEST_ID

_MAX_LINKS = 8192
_links_made: dict[tuple[str, str], Link] = {}
_MAX_BATCHES = 1024
_batches: dict[tuple, tuple[int, list[Link]]] = {}  # (kind, ids) -> (registry.version, links)


def to_requests(request_ids: list, kind: str = LINK_REQUEST) -> list[Link]:
    """Links to the roots of these requests (those registered and sampled), in order."""
    # A batch stays the same from step to step while its requests run (three spans a step link
    # to it): its links are looked up once while no request's root was added or dropped since.
    if not request_ids:
        return []
    ids = tuple(map(str, request_ids))
    version = registry.version  # read first: a root registered meanwhile makes this entry stale
    memo = _batches.get((kind, ids))
    if memo is not None and memo[0] == version:
        return list(memo[1])
    links = _links_to(ids, kind)
    if len(_batches) >= _MAX_BATCHES:  # bounded: batches change
        _batches.clear()
    _batches[kind, ids] = (version, links)
    return list(links)


def _links_to(request_ids: tuple[str, ...], kind: str) -> list[Link]:
    links = []
    for request_id in request_ids:
        root = registry.get(request_id)
        if root is not None and root.trace_flags.sampled:  # a request sampled out is not in the file
            link = _links_made.get((request_id, kind))
            if link is None or link.context is not root:
                if len(_links_made) >= _MAX_LINKS:
                    _links_made.clear()  # finished requests' links go; live ones are made again once
                link = _links_made[request_id, kind] = lean_span.checked_link(Link(
                    root, lean_span.frozen_attributes(((LINK_KIND, kind), (REQUEST_ID, request_id)))))
            links.append(link)
    return links
