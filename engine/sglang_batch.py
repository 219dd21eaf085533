"""A request in SGLang's batch (Req: its KV state, queue order and stale fill length) and the
batch handed to the model runner, in the shape engine.scheduler's SchedulerOutput has.

engine/sglang_scheduler.py runs SGLang's loop over these; SGLang keeps both in
sglang/srt/managers/schedule_batch.py (Req, ScheduleBatch).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.outputs import CachedRequestData, NewRequestData, SchedulerOutput
from engine.request import Request, RequestStatus
from engine.sglang_kv import ReqKV


@dataclass(eq=False)
class Entry:
    """A request with SGLang's per-request KV state beside it.

    Mirrors: sglang.srt.managers.schedule_batch:Req (sglang 0.5.23)
    """

    request: Request
    max_new_tokens: int
    kv: ReqKV = field(default_factory=ReqKV)
    retracted: bool = False
    blocks_sent: int = 0  # blocks of its table the model runner has been sent
    wait_queue_entry_time: int = 0  # ReqTimeStats.wait_queue_entry_time as an order: set at each queue entry
    # len(Req.full_untruncated_fill_ids): refreshed only by init_next_round_input (and the final
    # release), so 0 until first matched and stale after a retraction (schedule_batch.py:1104, :1673-1700).
    untruncated_fill_len: int = 0

    def __post_init__(self) -> None:
        self.kv.req = self.request

    def fill_ids(self) -> list[int]:
        return self.request.all_token_ids  # origin_input_ids + output_ids


class WaitingView(list):
    """The waiting queue's requests, in order, read the way engine.request_queue's queues are."""

    def peek_request(self) -> Request:
        return self[0]


def block_ids(kv: ReqKV, block_size: int) -> list[int]:
    """The request's pages as block ids: its token slots' first slot of each page."""
    return [slot // block_size for slot in kv.row[::block_size]]


def batch_output(batch: list[Entry], extend: bool, block_size: int, step: int,
                 retracted: set[str], finished: set[str]) -> SchedulerOutput:
    """SGLang's batch in the vLLM-mode scheduler's SchedulerOutput shape (engine/outputs.py), so
    the model runner and engine loop are shared: a request the model runner has not seen is new
    (whole block table); a retracted one comes back as a resumed cached request (whole new table);
    a running one sends only the blocks added this step."""
    num_scheduled: dict[str, int] = {}
    new_reqs: list[NewRequestData] = []
    cached = CachedRequestData.make_empty()
    for entry in batch:
        request, rid = entry.request, entry.request.request_id
        start = entry.kv.prefix_len if extend else entry.kv.committed - 1
        end = entry.kv.extend_end if extend else entry.kv.committed
        num_scheduled[rid] = end - start
        if extend and request.num_cached_tokens < 0:
            request.num_cached_tokens = start  # the prefix hit at first admission
        blocks = block_ids(entry.kv, block_size)
        request.num_computed_tokens = start
        if request.status == RequestStatus.WAITING:
            new_reqs.append(NewRequestData.from_request(request, blocks))
        else:
            resumed = request.status == RequestStatus.PREEMPTED
            cached.req_ids.append(rid)
            if resumed:
                cached.resumed_req_ids.add(rid)
            added = blocks if resumed else blocks[entry.blocks_sent:]
            cached.new_block_ids.append(added or None)
            cached.num_computed_tokens.append(start)
            cached.num_output_tokens.append(request.num_output_tokens)
        entry.blocks_sent = len(blocks)
        request.status = RequestStatus.RUNNING
        request.num_computed_tokens = end  # advanced at schedule time, as the vLLM-mode scheduler does
    return SchedulerOutput(
        scheduled_new_reqs=new_reqs,
        scheduled_cached_reqs=cached,
        num_scheduled_tokens=num_scheduled,
        total_num_scheduled_tokens=sum(num_scheduled.values()),
        preempted_req_ids=retracted,
        finished_req_ids=finished,
        step=step,
    )
