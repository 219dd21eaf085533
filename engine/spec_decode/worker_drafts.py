"""The model runner's side of "ngram_gpu" speculation: drafts proposed where the tokens are sampled.

Mirrors: vllm.v1.worker.gpu_model_runner:GPUModelRunner (vllm 0.33.0), its async spec-decode path with NgramProposerGPU
With "ngram" the drafts travel to the scheduler after the step (take_draft_token_ids ->
Scheduler.update_draft_token_ids) and come back scheduled. Under async scheduling the next step is
scheduled before this one's tokens exist, so vLLM 0.33 schedules "ngram_gpu" speculation this way:
- the scheduler gives every request that samples k placeholder drafts (-1) and counts 1 + its
  drafts as output placeholders, as if all drafts were accepted
  (vllm/v1/core/sched/async_scheduler.py:24-49 AsyncScheduler._update_after_schedule);
- the runner keeps each request's tokens itself (vLLM: token_ids_gpu_tensor, num_tokens_no_spec_gpu),
  scatters the tokens the rejection sampler accepted into them and proposes the next drafts from
  them right after sampling (vllm/v1/worker/gpu_model_runner.py:4752-4790
  GPUModelRunner.propose_draft_token_ids; vllm/v1/spec_decode/ngram_proposer_gpu.py:314-389
  NgramProposerGPU.propose);
- before the next step runs, the runner trims the scheduled placeholder drafts to the drafts it
  found (vllm/v1/spec_decode/ngram_proposer_gpu.py:472-508 update_scheduler_for_invalid_drafts),
  puts its drafts in their place (vllm/v1/worker/gpu_model_runner.py:1850-1870
  GPUModelRunner._prepare_input_ids), and takes the drafts the step before rejected off the
  scheduler's optimistic num_computed_tokens (vllm/v1/worker/gpu_model_runner.py:1343-1544
  GPUModelRunner._update_states, the prev_num_draft_len correction).
The scheduler learns the acceptance one step late, in update_from_output, from the tokens returned.

Here: plan() runs on the scheduling thread (it reads the scheduler's requests: a new or resumed
request's tokens, block tables); resolve() and after_sample() run on the model thread and touch
only this module's per-request state, so the next step may be scheduled meanwhile. The search is
engine.spec_decode.ngram_proposer's (the same result as vLLM's torch kernel: the earliest earlier
occurrence of the longest suffix n-gram, up to k tokens after it), run on the host.

Differences from vLLM: a running request that skipped a step keeps the drafts proposed after its
last step (vLLM trims by row of its persistent batch, which such a request has left); drafts are
proposed as lists, not a [batch, k] device tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.model_input import RequestInput
from engine.outputs import DraftTokenIds, ModelRunnerOutput, SchedulerOutput
from engine.request import Request
from engine.spec_decode.ngram_proposer import NgramProposer
from engine.spec_decode.rejection_sampler import PLACEHOLDER_TOKEN_ID


@dataclass
class RequestPlan:
    """What the scheduling thread hands the model thread about one scheduled request."""

    request: Request  # its sampling params and id only: its tokens move on the scheduling thread
    block_ids: list[int]  # a copy: the next schedule may extend the runner's table meanwhile
    num_computed_tokens: int  # the scheduler's, optimistic by a step in flight's drafts
    num_scheduled_tokens: int
    num_scheduled_drafts: int
    # A new or resumed request: the tokens the runner's own copy starts from (its drafts, if any,
    # are vLLM's admission padding and stay placeholders, always rejected).
    token_ids: list[int] | None
    generator: torch.Generator | None


@dataclass
class StepPlan:
    """A step whose inputs are built on the model thread (ModelRunner.execute_model_input)."""

    requests: list[RequestPlan]
    step: int
    finished_req_ids: set[str]

    @property
    def req_ids(self) -> list[str]:
        return [plan.request.request_id for plan in self.requests]

    @property
    def num_tokens(self) -> int:
        """The tokens scheduled, before the runner trims drafts it has none for."""
        return sum(plan.num_scheduled_tokens for plan in self.requests)


@dataclass
class DraftState:
    """The runner's own view of a request (vLLM: its rows of token_ids_gpu_tensor / num_tokens_no_spec)."""

    token_ids: list[int]
    num_computed_tokens: int  # true: rejected drafts already taken off
    draft_token_ids: list[int] = field(default_factory=list)  # proposed after its last step
    num_fed_drafts: int = 0  # drafts its last step verified (vLLM: prev_num_draft_len after trimming)


class WorkerDrafts:
    def __init__(self, drafter: NgramProposer, num_speculative_tokens: int) -> None:
        self.drafter = drafter
        self.num_speculative_tokens = num_speculative_tokens
        self.states: dict[str, DraftState] = {}  # model thread only
        # Placeholder drafts trimmed for want of a draft (vLLM's scheduler counts them as rejected).
        self.num_trimmed_drafts = 0
        self._finished: set[str] = set()  # scheduling thread: finished since the last plan

    # -- scheduling thread --------------------------------------------------------------

    def note_finished(self, req_ids: set[str]) -> None:
        self._finished |= req_ids

    def plan(self, scheduler_output: SchedulerOutput, requests: dict, generator_for) -> StepPlan:
        """The step as scheduled, with copies of what the model thread must not read live."""
        self.note_finished(scheduler_output.finished_req_ids)
        new_ids = {new.req_id for new in scheduler_output.scheduled_new_reqs}
        cached = scheduler_output.scheduled_cached_reqs
        plans = []
        for req_id in [new.req_id for new in scheduler_output.scheduled_new_reqs] + cached.req_ids:
            state = requests[req_id]
            request = state.request
            fresh = req_id in new_ids or req_id in cached.resumed_req_ids
            plans.append(RequestPlan(
                request=request,
                block_ids=list(state.block_ids),
                num_computed_tokens=state.num_computed_tokens,
                num_scheduled_tokens=scheduler_output.num_scheduled_tokens[req_id],
                num_scheduled_drafts=len(scheduler_output.scheduled_spec_decode_tokens.get(req_id, ())),
                token_ids=list(request.all_token_ids) if fresh else None,
                generator=generator_for(request),
            ))
        finished, self._finished = self._finished, set()
        return StepPlan(plans, scheduler_output.step, finished)

    # -- model thread ---------------------------------------------------------------------

    def resolve(self, step_plan: StepPlan) -> list[RequestInput]:
        """Each request's rows: its true start, its known tokens, its drafts trimmed to those found."""
        for req_id in step_plan.finished_req_ids:
            self.states.pop(req_id, None)
        inputs = []
        for plan in step_plan.requests:
            req_id = plan.request.request_id
            if plan.token_ids is not None:
                # New, or resumed after a preemption (its KV recomputed): the runner's copy restarts.
                self.states[req_id] = DraftState(plan.token_ids, plan.num_computed_tokens)
            state = self.states[req_id]
            # The scheduler counted the drafts of a step still in flight as accepted; the runner
            # knows what that step accepted (vLLM: correction = prev_num_draft_len - num_accepted).
            correction = plan.num_computed_tokens - state.num_computed_tokens
            assert 0 <= correction <= self.num_speculative_tokens, (req_id, plan.num_computed_tokens, state.num_computed_tokens)
            start = state.num_computed_tokens
            num_known_rows = plan.num_scheduled_tokens - plan.num_scheduled_drafts
            assert start + num_known_rows <= len(state.token_ids), f"{req_id}: scheduled past its tokens"
            if plan.num_scheduled_drafts and plan.token_ids is not None:
                drafts = [PLACEHOLDER_TOKEN_ID] * plan.num_scheduled_drafts  # admission padding
            else:
                # vLLM: update_scheduler_for_invalid_drafts trims to the drafts found.
                drafts = state.draft_token_ids[: plan.num_scheduled_drafts]
                self.num_trimmed_drafts += plan.num_scheduled_drafts - len(drafts)
            sampled = start + num_known_rows == len(state.token_ids)
            assert sampled or not drafts, f"{req_id}: drafts after a prefill chunk"
            state.num_computed_tokens = start + num_known_rows + len(drafts)
            state.num_fed_drafts = len(drafts)
            inputs.append(RequestInput(
                plan.request, start, state.token_ids[start: start + num_known_rows], drafts, plan.block_ids,
                False, plan.generator if sampled else None, sampled,
            ))
        return inputs

    def after_sample(self, req_ids: list[str], output: ModelRunnerOutput) -> DraftTokenIds:
        """Scatter the accepted tokens into the runner's copies, roll rejected drafts back, propose.

        Returns the drafts k wide with -1 where none were found, as vLLM's draft tensor reaches a
        synchronous scheduler (take_draft_token_ids); under async scheduling nobody takes them.
        """
        contexts, sampled_token_ids = [], []
        for req_id, sampled in zip(req_ids, output.sampled_token_ids, strict=True):
            state = self.states[req_id]
            if sampled:
                state.num_computed_tokens -= state.num_fed_drafts - (len(sampled) - 1)
                state.token_ids.extend(sampled)
            contexts.append(state.token_ids)
            sampled_token_ids.append(sampled)
        drafts = self.drafter.propose(self.num_speculative_tokens, sampled_token_ids, contexts)
        padded = []
        for req_id, draft in zip(req_ids, drafts):
            self.states[req_id].draft_token_ids = draft
            padded.append(draft + [PLACEHOLDER_TOKEN_ID] * (self.num_speculative_tokens - len(draft)))
        return DraftTokenIds(req_ids=list(req_ids), draft_token_ids=padded)
