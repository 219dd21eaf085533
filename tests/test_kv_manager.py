"""The scheduler's KV-manager interface (engine.kv_manager.KVManager): both caches implement it,
with the same signatures, and a prefix hit travels from get_computed_blocks to allocate_slots
in the value returned, not in state the manager keeps between the calls."""
from __future__ import annotations

import inspect

import pytest

from engine.block_pool import update_block_hashes
from engine.config import CacheConfig, SchedulerConfig
from engine.kv_cache_manager import KVCacheManager
from engine.kv_manager import KVManager
from engine.radix_kv_manager import RadixKVCacheManager, RadixPrefixHit
from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler

BLOCK_SIZE = 4
MANAGERS = [KVCacheManager, RadixKVCacheManager]
PROTOCOL_METHODS = ["get_num_free_blocks", "get_block_ids", "get_computed_blocks", "allocate_slots",
                    "record_prefix_cache_stats", "reset_prefix_cache", "free"]


def make_request(request_id: str, token_ids: list[int]) -> Request:
    request = Request(request_id, list(token_ids), SamplingParams(max_tokens=4))
    update_block_hashes(request, BLOCK_SIZE)
    return request


def run_to_finish(manager: KVManager, request: Request) -> int:
    """Admit the whole prompt (as the scheduler does), then finish it; returns the hit length."""
    hit, num_hit = manager.get_computed_blocks(request)
    assert manager.allocate_slots(request, request.num_tokens - num_hit, num_hit, hit) is not None
    request.num_computed_tokens = request.num_tokens
    request.status = RequestStatus.FINISHED_STOPPED
    manager.free(request)
    return num_hit


def public_state(manager: object) -> dict:
    """Every attribute of the manager, sized: what a side channel between calls would change."""
    return {name: len(value) if hasattr(value, "__len__") else value for name, value in vars(manager).items()}


@pytest.mark.parametrize("manager_class", MANAGERS)
def test_both_managers_implement_the_protocol(manager_class):
    assert isinstance(manager_class(num_blocks=16, block_size=BLOCK_SIZE), KVManager)


@pytest.mark.parametrize("manager_class", MANAGERS)
@pytest.mark.parametrize("method", PROTOCOL_METHODS)
def test_protocol_methods_have_the_protocol_signature(manager_class, method):
    """isinstance only sees names; the scheduler also relies on the parameters (it passes some by
    keyword). An implementation may add trailing optional parameters, nothing else."""
    wanted = list(inspect.signature(getattr(KVManager, method)).parameters)
    have = list(inspect.signature(getattr(manager_class, method)).parameters)
    assert have[: len(wanted)] == wanted
    extra = list(inspect.signature(getattr(manager_class, method)).parameters.values())[len(wanted):]
    assert all(p.default is not inspect.Parameter.empty for p in extra)


def test_a_class_missing_a_method_is_not_a_kv_manager():
    """The check above can fail: a manager without free() is refused."""

    class Incomplete(RadixKVCacheManager):
        free = None  # type: ignore[assignment]

    assert not isinstance(Incomplete(num_blocks=16, block_size=BLOCK_SIZE), KVManager)


def test_the_vllm_scheduler_holds_a_kv_manager():
    scheduler = Scheduler(SchedulerConfig(max_model_len=64), CacheConfig(block_size=BLOCK_SIZE), 16)
    assert isinstance(scheduler.kv_cache_manager, KVManager)


def test_the_vllm_scheduler_refuses_sglang_mode():
    """SGLang's loop is engine.sglang_scheduler, not a branch of vLLM's Scheduler."""
    with pytest.raises(ValueError, match="SglangScheduler"):
        Scheduler(SchedulerConfig(max_model_len=64, cache_mode="sglang"), CacheConfig(block_size=BLOCK_SIZE), 16)


def test_a_radix_lookup_leaves_the_manager_unchanged():
    """get_computed_blocks is a pure lookup: nothing is kept for allocate_slots to pick up."""
    manager = RadixKVCacheManager(num_blocks=16, block_size=BLOCK_SIZE)
    run_to_finish(manager, make_request("a", list(range(13))))
    before = public_state(manager)
    hit, num_hit = manager.get_computed_blocks(make_request("b", list(range(13))))
    assert num_hit == 12 and isinstance(hit, RadixPrefixHit) and len(hit) == 3
    assert public_state(manager) == before


def test_the_radix_hit_passed_back_is_what_gets_locked():
    manager = RadixKVCacheManager(num_blocks=16, block_size=BLOCK_SIZE)
    run_to_finish(manager, make_request("a", list(range(13))))
    b = make_request("b", list(range(13)))
    hit, num_hit = manager.get_computed_blocks(b)
    assert manager.tree.protected_size() == 0
    new_pages = manager.allocate_slots(b, b.num_tokens - num_hit, num_hit, hit)
    assert new_pages is not None
    assert manager.tree.protected_size() == num_hit  # the hit's path is locked against eviction
    assert manager.get_block_ids("b")[:3] == list(hit.pages)
    # A lookup that was never passed back locks nothing: no leftover match adopted later.
    c = make_request("c", list(range(13)))
    manager.get_computed_blocks(c)
    assert manager.allocate_slots(c, c.num_tokens) is not None
    assert manager.tree.protected_size() == num_hit


@pytest.mark.parametrize("manager_class", MANAGERS)
def test_reset_prefix_cache_refuses_while_a_request_holds_kv(manager_class):
    manager = manager_class(num_blocks=16, block_size=BLOCK_SIZE)
    assert run_to_finish(manager, make_request("a", list(range(13)))) == 0
    holder = make_request("holder", [99] * 5)
    assert manager.allocate_slots(holder, holder.num_tokens) is not None
    assert manager.reset_prefix_cache() is False
    assert manager.get_computed_blocks(make_request("b", list(range(13))))[1] == 12  # nothing dropped
    holder.status = RequestStatus.FINISHED_ABORTED
    manager.free(holder)
    assert manager.reset_prefix_cache() is True
    assert manager.get_computed_blocks(make_request("c", list(range(13))))[1] == 0
    assert manager.get_num_free_blocks() == 15  # every usable block is back
