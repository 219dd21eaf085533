"""SGLang's cache-aware admission order for the waiting queue (the "lpm" policy).

Mirrors: sglang.srt.managers.schedule_policy:SchedulePolicy.calc_priority (sglang 0.5.23)
With policy "lpm": requests whose prompt has the longest cached prefix go first, so the prefix they share is
used while it is still in the tree. Like SGLang, the sort is skipped (plain FCFS) once the
queue is longer than WAITING_QUEUE_PREFIX_MATCH_MAX, because matching every waiting prompt
each step gets expensive. Left out: SGLang's in-batch prefix deprioritization (it holds
back all but one of several waiting requests that share an uncached prefix).
"""
from __future__ import annotations

from typing import Callable

from engine.request import Request
from engine.request_queue import FCFSRequestQueue

WAITING_QUEUE_PREFIX_MATCH_MAX = 128  # sglang.srt.managers.schedule_policy


def sort_by_longest_prefix(waiting: FCFSRequestQueue, prefix_len: Callable[[Request], int]) -> None:
    # Mirrors: sglang.srt.managers.schedule_policy:SchedulePolicy._sort_by_longest_prefix (sglang 0.5.23)
    if len(waiting) > WAITING_QUEUE_PREFIX_MATCH_MAX or len(waiting) < 2:
        return
    waiting.sort(key=lambda r: -prefix_len(r))  # stable: FCFS among equal matches
