"""Hypothesis strategies for differential search: generated workloads and replay configs.

Engine-neutral on purpose. A case is a ReplayConfig plus requests written as recipes (prompt
segments named by seed text), so it can be replayed through any pair of scheduler runners
(mini vs vllm; mini-sglang vs sglang with a narrower SearchSpace) and so that a
failing case prints as a short Python expression that rebuilds it, not as thousands of ids.

What the space covers, and why each knob is drawn the way it is:
- block sizes 1..64 (powers of two drawn more often: they are what servers run; odd sizes find
  off-by-one errors in block arithmetic);
- KV pools from "the largest request barely fits" (preemption almost certain once a second
  request runs) through "some pressure" to "everything fits at once";
- prompts made of shared prefixes (system prompts that are exact block multiples, or not),
  exact repeats of an earlier prompt (full-prefix hits: the hit is capped one token short),
  continuations of an earlier request's prompt plus its forced output (hits on blocks that were
  filled while decoding), and fresh prompts;
- arrivals in one burst, staggered, or a late wave that lands while early requests are being
  preempted under a tight pool; and (SearchSpace.max_after_preemption) requests placed 1-4 steps
  after the first preemption itself, for schedulers whose preemptions come too late for any drawn
  arrival step (SGLang's retraction: tests/test_conformance_search_sglang.py says why);
- fcfs and priority policy (priorities 0..2, or SearchSpace.priorities: values further apart than
  a preemption threshold), chunked prefill on (with or without long_prefill_token_threshold)
  or off, max_num_seqs from 1 up, and sometimes a max_model_len that caps generation.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from hypothesis import strategies as st

from engine.math_utils import cdiv
from tracer.replay.config import ReplayConfig
from tracer.replay.runners.base import ReplayLog
from tracer.replay.workload import WorkloadRequest, pseudo_random_ids

# A prompt segment: (seed text, number of tokens) -> pseudo_random_ids(seed, n). A request's
# forced output is pseudo_random_ids(its id, max_tokens), and pseudo_random_ids draws its ids in
# order, so the segment (id, k) is exactly the first k ids that request generates.
Segment = tuple[str, int]


@dataclass(frozen=True)
class RequestRecipe:
    id: str
    arrival_step: int
    segments: tuple[Segment, ...]
    max_tokens: int
    priority: int = 0

    @property
    def prompt_len(self) -> int:
        return sum(n for _, n in self.segments)

    def build(self) -> WorkloadRequest:
        prompt = [t for seed, n in self.segments for t in pseudo_random_ids(seed, n)]
        return WorkloadRequest(self.id, self.arrival_step, prompt, self.max_tokens, priority=self.priority)


@dataclass(frozen=True)
class SearchCase:
    config: ReplayConfig
    requests: tuple[RequestRecipe, ...]
    # The shapes drawn ("pool:tiny", "arrivals:late-wave", ...): reported as hypothesis events.
    shapes: tuple[str, ...] = field(default=(), compare=False)
    # Requests whose arrival_step counts from the first step that preempted a request, not from 0:
    # place_after_preemption() turns them into ordinary requests once a replay has found that step.
    after_preemption: tuple[RequestRecipe, ...] = ()

    def workload(self) -> list[WorkloadRequest]:
        if self.after_preemption:
            raise ValueError("place_after_preemption() first: these requests have no arrival step yet")
        return [r.build() for r in self.requests]

    def __repr__(self) -> str:
        # A Python expression that rebuilds the case: paste it into a regression test.
        defaults = ReplayConfig()
        changed = {k: v for k, v in self.config.to_json().items() if getattr(defaults, k) != v}
        config = "ReplayConfig(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"
        requests = ",\n    ".join(repr(r) for r in self.requests)
        later = f", after_preemption={self.after_preemption!r}" if self.after_preemption else ""
        return f"SearchCase(config={config}, requests=(\n    {requests},\n), shapes={self.shapes!r}{later})"


def place_after_preemption(case: SearchCase, replay: Callable[[SearchCase], ReplayLog]) -> SearchCase:
    """The case with its after_preemption requests arriving where they are meant to: `offset` steps
    after the first step at which `replay` (one scheduler over the rest of the case) preempted.

    Two phases because no draw can know that step: it comes out of the schedule (under SGLang's
    overcommit, 90-120 steps in, long after every drawn arrival). Arrivals after it leave every step
    up to it as it was, so the preemption still happens there, and the requests arrive while the
    preempted ones wait (a retracted request waits 1-23 steps before it is readmitted). Without a
    preemption they are left out: the case is the rest alone. The result is a plain case whose repr
    rebuilds it."""
    if not case.after_preemption:
        return case
    base = replace(case, after_preemption=())
    first = next((step.step for step in replay(base).steps if step.preempted), None)
    if first is None:
        return base
    placed = tuple(replace(r, arrival_step=first + r.arrival_step) for r in case.after_preemption)
    return replace(base, requests=base.requests + placed, shapes=tuple(sorted(base.shapes + ("arrivals:after-preemption",))))


@dataclass(frozen=True)
class SearchSpace:
    """Which part of the config space to draw from. A runner pair that supports less narrows it
    rather than rewriting the strategies: mini-sglang vs sglang compares SGLang's lpm policy
    only, so SearchSpace(policies=("fcfs",)) (and whatever else its runner refuses); observe()
    reads only StepRecord decision fields, which every scheduler runner records."""

    block_sizes: tuple[int, ...] = tuple(range(1, 65))
    policies: tuple[str, ...] = ("fcfs", "priority")
    chunked_prefill: tuple[bool, ...] = (True, False)
    prefix_caching: tuple[bool, ...] = (True, False)
    max_num_seqs: tuple[int, ...] = (1, 2, 3, 4, 8, 16, 64)
    token_budgets: tuple[int, ...] = (1, 3, 8, 16, 32, 64, 128, 256, 512)
    max_requests: int = 10
    max_prompt_blocks: int = 5
    max_output_tokens: int = 48
    # Added for the SGLang pair (tests/test_conformance_search_sglang.py says why each is set
    # there); their defaults draw exactly what the vLLM search drew before they existed.
    min_requests: int = 1
    min_output_tokens: int = 1
    cap_max_model_len: bool = True  # False: never a max_model_len that cuts generation short
    long_prefill_threshold: bool = True  # False: never drawn (always 0)
    chunk_min_blocks: int = 0  # a chunked step budget of at least this many blocks
    pool_slack_blocks: int = 0  # blocks added to every drawn pool
    # "overcommit": a pool short of what all requests need together by part of their outputs: a
    # scheduler that reserves only part of each running request's remaining output
    # (SGLang's new_token_ratio, 0.7 at first) admits them all and must retract to finish.
    pool_shapes: tuple[str, ...] = ("tiny", "tiny", "pressure", "pressure", "large")
    # Late waves twice as often: they are the one shape that puts arrivals next to preemptions.
    arrival_shapes: tuple[str, ...] = ("burst", "staggered", "late-wave", "late-wave")
    late_wave_steps: tuple[int, int] = (1, 16)  # early decode steps, when a tight pool first overflows
    # Where in the "overcommit" window the pool falls: 0.0 draws all of it, 0.5 only its tighter
    # half (closer to what the 0.7-weighted admissions leave, so retraction is likelier).
    overcommit_tightness: float = 0.0
    # Priority values (policy priority); None: 0..2, the old draw. Drawing values further apart than
    # a scheduler's preemption threshold (SGLang's 10) is what makes it preempt by priority.
    priorities: tuple[int, ...] | None = None
    # ReplayConfig.priority_scheduling_preemption_threshold, drawn only when more than one is given.
    preemption_thresholds: tuple[int, ...] = (10,)
    # Up to this many requests that arrive 1..4 steps after the first preemption
    # (SearchCase.after_preemption): arrivals while others are preempted, on purpose.
    max_after_preemption: int = 0


POW2_BLOCK_SIZES = (1, 2, 4, 8, 16, 32, 64)


@st.composite
def _block_size(draw: st.DrawFn, space: SearchSpace) -> int:
    common = [b for b in POW2_BLOCK_SIZES if b in space.block_sizes]
    if common and draw(st.booleans()):
        return draw(st.sampled_from(common))
    return draw(st.sampled_from(space.block_sizes))


@st.composite
def _length(draw: st.DrawFn, block_size: int, max_blocks: int, exact: bool, minimum: int = 0) -> int:
    """A token count in whole blocks (exact) or with a ragged tail: block-boundary cases are
    where a full-prefix hit loses its last block and where a decode step opens a new block."""
    blocks = draw(st.integers(0, max_blocks))
    tail = 0 if exact or block_size == 1 else draw(st.integers(1, block_size - 1))
    return max(minimum, blocks * block_size + tail)


@st.composite
def _prompts(draw: st.DrawFn, space: SearchSpace, block_size: int, num_requests: int):
    """Each request's prompt segments and max_tokens, and which prompt shapes were drawn."""
    exact = draw(st.sampled_from(["always", "sometimes", "never"]))

    def is_exact() -> bool:
        return exact == "always" or (exact == "sometimes" and draw(st.booleans()))

    num_prefixes = draw(st.integers(0, 3))
    prefixes = [(f"sys{i}", draw(_length(block_size, space.max_prompt_blocks, is_exact(), 1))) for i in range(num_prefixes)]
    shapes: set[str] = set()
    recipes: list[tuple[tuple[Segment, ...], int]] = []
    ids = [f"q{i}" for i in range(num_requests)]
    for i, request_id in enumerate(ids):
        kinds = ["fresh"] + (["shared"] if prefixes else []) + (["repeat", "continue"] if recipes else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "fresh":
            segments: tuple[Segment, ...] = ((request_id, draw(_length(block_size, space.max_prompt_blocks, is_exact(), 1))),)
        elif kind == "shared":
            prefix = draw(st.sampled_from(prefixes))
            own = draw(_length(block_size, 2, is_exact()))
            segments = (prefix,) + (((request_id, own),) if own else ())
        elif kind == "repeat":
            segments = draw(st.sampled_from(recipes))[0]  # the same prompt again: a full-prefix hit
        else:
            j = draw(st.integers(0, len(recipes) - 1))
            earlier, earlier_max = recipes[j]
            answer = draw(st.integers(1, earlier_max))  # a prefix of what ids[j] generates
            own = draw(_length(block_size, 1, is_exact()))
            segments = earlier + ((ids[j], answer),) + (((request_id, own),) if own else ())
        shapes.add(f"prompt:{kind}")
        recipes.append((segments, draw(st.integers(space.min_output_tokens, space.max_output_tokens))))
    if exact != "never":
        shapes.add("prompt:block-multiples")
    return recipes, shapes


@st.composite
def _arrivals(draw: st.DrawFn, num_requests: int, space: SearchSpace) -> tuple[list[int], str]:
    shape = draw(st.sampled_from(space.arrival_shapes))
    if shape == "burst":
        return [0] * num_requests, shape
    if shape == "staggered":
        steps, clock = [], 0
        for _ in range(num_requests):
            steps.append(clock)
            clock += draw(st.integers(0, 6))
        return steps, shape
    # Late wave: the first requests fill the pool together; the rest arrive while those decode
    # (and, under a tight pool, while some of them sit preempted in the waiting queue).
    first = draw(st.integers(1, max(1, num_requests - 1)))
    wave_at = draw(st.integers(*space.late_wave_steps))
    return [0] * first + [wave_at + draw(st.integers(0, 3)) for _ in range(num_requests - first)], shape


@st.composite
def search_cases(draw: st.DrawFn, space: SearchSpace = SearchSpace()) -> SearchCase:
    block_size = draw(_block_size(space))
    num_requests = draw(st.integers(space.min_requests, space.max_requests))
    prompts, shapes = draw(_prompts(space, block_size, num_requests))
    arrivals, arrival_shape = draw(_arrivals(num_requests, space))
    shapes.add(f"arrivals:{arrival_shape}")
    policy = draw(st.sampled_from(space.policies))
    priorities = st.integers(0, 2) if space.priorities is None else st.sampled_from(space.priorities)
    requests = tuple(
        RequestRecipe(f"q{i}", arrivals[i], segments, max_tokens, draw(priorities) if policy == "priority" else 0)
        for i, (segments, max_tokens) in enumerate(prompts)
    )

    longest_prompt = max(r.prompt_len for r in requests)
    max_model_len = 2048
    if space.cap_max_model_len and draw(st.integers(0, 4)) == 0:
        # A context limit a little past the longest prompt: generation ends by length.
        max_model_len = longest_prompt + 1 + draw(st.integers(0, space.max_output_tokens // 2))
        shapes.add("max_model_len:caps")
    max_num_seqs = draw(st.sampled_from(space.max_num_seqs))
    chunked = draw(st.sampled_from(space.chunked_prefill))
    if chunked:
        budget = max(max_num_seqs, draw(st.sampled_from(space.token_budgets)), space.chunk_min_blocks * block_size)
    else:
        budget = max(max_model_len, max_num_seqs)  # vLLM refuses an unchunked budget below max_model_len
        shapes.add("chunked_prefill:off")
    # The threshold caps a prefill's chunk even with chunked prefill off (both schedulers apply
    # it before the unchunked check), so it is drawn either way.
    threshold = 0
    if space.long_prefill_threshold:
        threshold = min(max_model_len, draw(st.sampled_from([0, 0, 1, 7, block_size, 2 * block_size + 1, 40])))
    if threshold:
        shapes.add("long_prefill_threshold")

    # Pool size, from the requests' own needs: drive() refuses a request that can never fit.
    needs = [cdiv(r.prompt_len + r.max_tokens, block_size) for r in requests]
    later = ()
    if space.max_after_preemption:  # drawn only then, so spaces without it draw as they always did
        later = draw(_after_preemption(space, requests, max(needs) * block_size, priorities if policy == "priority" else None))
    pool = draw(st.sampled_from(space.pool_shapes))
    if pool == "tiny":
        usable = max(needs) + draw(st.integers(0, 2))
    elif pool == "pressure":
        usable = max(needs) + draw(st.integers(0, max(1, sum(needs) // 2)))
    elif pool == "overcommit":
        # A new request is admitted against 0.7 of the others' remaining outputs, so the pool may
        # fall short of the total by up to 0.3 of all outputs but one request's.
        n = len(requests)
        short = sum(r.max_tokens for r in requests) * 3 * (n - 1) // (10 * n * block_size)
        least = max(1, int(short * space.overcommit_tightness))
        usable = max(max(needs), sum(needs) - draw(st.integers(least, max(least, short))))
    else:
        usable = sum(needs) + draw(st.integers(0, 8))
    usable += space.pool_slack_blocks
    shapes.add(f"pool:{pool}")

    threshold_kwargs = {}
    if len(space.preemption_thresholds) > 1 and policy == "priority":
        threshold_kwargs["priority_scheduling_preemption_threshold"] = draw(st.sampled_from(space.preemption_thresholds))
    config = ReplayConfig(
        block_size=block_size,
        num_blocks=usable + 1,  # + the null block
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=budget,
        max_model_len=max_model_len,
        enable_chunked_prefill=chunked,
        enable_prefix_caching=draw(st.sampled_from(space.prefix_caching)),
        policy=policy,
        long_prefill_token_threshold=threshold,
        **threshold_kwargs,
    )
    return SearchCase(config, requests, tuple(sorted(shapes)), after_preemption=later)


@st.composite
def _after_preemption(draw: st.DrawFn, space: SearchSpace, requests: tuple[RequestRecipe, ...], fits: int,
                      priorities: st.SearchStrategy[int] | None) -> tuple[RequestRecipe, ...]:
    """Requests to arrive 1..4 steps after the first preemption: a repeat of an earlier prompt (whose
    blocks a retracted request may have left in the cache) or a fresh short one, each no larger than
    the largest drawn request (`fits` tokens), so every pool that fits the rest fits them."""
    later = []
    for i in range(draw(st.integers(1, space.max_after_preemption))):
        request_id = f"q{len(requests) + i}"
        if draw(st.booleans()):
            earlier = draw(st.sampled_from(requests))
            segments, room = earlier.segments, earlier.max_tokens
        else:
            # No longer than the longest drawn prompt either: a max_model_len cap sits just past it.
            length = draw(st.integers(1, max(1, min(16, fits - 1, max(r.prompt_len for r in requests)))))
            segments, room = ((request_id, length),), fits - length
        # Short outputs: they need to arrive and be scheduled, not to run the case 100 steps longer.
        max_tokens = draw(st.integers(1, max(1, min(room, 16))))
        later.append(RequestRecipe(request_id, draw(st.integers(1, 4)), segments, max_tokens,
                                   draw(priorities) if priorities is not None else 0))
    return tuple(later)


# -- what a replay exercised --------------------------------------------------------------


def observe(case: SearchCase, log: ReplayLog) -> set[str]:
    """The mechanisms one replay reached, read off its decisions (scheduled tokens, admissions
    with their prefix hits, preemptions, finishes) and the case, not off engine internals."""
    config = case.config
    prompt_len = {r.id: r.prompt_len for r in case.requests}
    wants = {r.id: r.prompt_len + r.max_tokens for r in case.requests}
    seen = {f"block_size={config.block_size}", f"max_num_seqs={config.max_num_seqs}"}
    computed: dict[str, int] = {}  # per request, rebuilt from the decisions
    out: set[str] = set()  # preempted and not yet resumed
    for step in log.steps:
        if step.arrivals and out:
            seen.add("arrival-while-preempted")
        if step.preempted and step.admitted:
            # A preemption in a step that admits: SGLang's priority preemption (PrefillAdder.
            # preempt_to_schedule), since retract_decode runs only on a step that admits nothing
            # (get_next_batch_to_run decodes only without a prefill batch, sglang/srt/managers/
            # scheduler.py:3992-3998); vLLM admits nothing in a step that preempted (vllm/v1/core/
            # sched/scheduler.py:1050), so its pair never reaches this.
            seen.add("priority-preempted")
        for admission in step.admitted:
            computed[admission.request_id] = admission.cached_tokens
            out.discard(admission.request_id)
            if admission.resumed:
                seen.add("resumed")
            elif admission.cached_tokens:
                seen.add("prefix-hit")
                # The most a hit can be: every full block short of the last prompt token.
                if admission.cached_tokens == (prompt_len[admission.request_id] - 1) // config.block_size * config.block_size:
                    seen.add("full-prefix-hit")
        for request_id, n in step.scheduled:
            computed[request_id] = computed.get(request_id, 0) + n
            if computed[request_id] < prompt_len[request_id]:
                seen.add("chunked-prefill")  # a prompt left unfinished at the end of a step
                if n == config.long_prefill_token_threshold:
                    seen.add("threshold-capped")
        for request_id in step.preempted:
            out.add(request_id)
            computed.pop(request_id, None)
        if step.preempted:
            seen.add("preempted")
        for request_id, _reason in step.finished:
            if wants[request_id] > config.max_model_len:
                seen.add("finished-by-max_model_len")
    if "preempted" in seen and config.enable_prefix_caching:
        seen.add(f"{config.policy}+caching+preempted")
    return seen


@dataclass
class SearchStats:
    """Counts across a search's examples: how many reached each mechanism."""

    examples: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def record(self, seen: set[str]) -> None:
        self.examples += 1
        for name in seen:
            self.counts[name] = self.counts.get(name, 0) + 1

    def share(self, name: str) -> float:
        return self.counts.get(name, 0) / self.examples if self.examples else 0.0

    def to_json(self) -> dict:
        return {"examples": self.examples, "counts": dict(sorted(self.counts.items()))}
