"""Per-request output state: incremental detokenization, stop strings, the RequestOutput a caller sees.

Mirrors: vllm.v1.engine.output_processor:OutputProcessor (vllm 0.33.0)
vLLM runs it in the API-server process on each batch of EngineCoreOutputs; here it runs right after the engine step, in the same process.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.detokenizer import IncrementalDetokenizer
from engine.outputs import EngineCoreOutput
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer


@dataclass
class RequestOutput:
    """What the engine reports about one request after a step.

    Mirrors: vllm.outputs:RequestOutput (vllm 0.33.0)
    """

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list)
    text: str = ""
    new_token_ids: list[int] = field(default_factory=list)
    delta_text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestState:
    """vLLM: output_processor.RequestState."""

    detokenizer: IncrementalDetokenizer
    output: RequestOutput


@dataclass
class OutputProcessorOutput:
    request_outputs: list[RequestOutput]
    # Requests a stop string ended: the engine core must stop them too.
    reqs_to_abort: list[str]


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.request_states: dict[str, RequestState] = {}

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.request_states[request_id] = RequestState(
            IncrementalDetokenizer(self.tokenizer, params.stop), RequestOutput(request_id, prompt_token_ids)
        )

    def abort_requests(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            state = self.request_states.pop(request_id, None)
            if state is not None and state.output.finish_reason is None:
                state.output.finish_reason = "abort"

    def process_outputs(self, engine_core_outputs: list[EngineCoreOutput]) -> OutputProcessorOutput:
        """Detokenize one step's new tokens for every request in it, apply stop strings, finish the done.

        Mirrors: vllm.v1.engine.output_processor:OutputProcessor.process_outputs (vllm 0.33.0) (the detokenize hop).
        """
        request_outputs, reqs_to_abort = [], []
        for core_output in engine_core_outputs:
            state = self.request_states.get(core_output.request_id)
            if state is None:  # aborted while the step ran
                continue
            detokenizer, out = state.detokenizer, state.output
            out.delta_text = detokenizer.update(core_output.new_token_ids)
            # Tokens past a stop string's end are dropped (vLLM: OutputProcessor._trim_surplus_tokens).
            out.new_token_ids = core_output.new_token_ids[: detokenizer.num_kept]
            out.output_token_ids = out.output_token_ids + out.new_token_ids
            out.num_cached_tokens = core_output.num_cached_tokens
            out.finish_reason = core_output.finish_reason
            out.stop_reason = core_output.stop_reason
            if detokenizer.stop_string is not None and not out.finished:
                out.finish_reason, out.stop_reason = "stop", detokenizer.stop_string
                reqs_to_abort.append(core_output.request_id)
            if out.finished:
                out.delta_text += detokenizer.flush()
                del self.request_states[core_output.request_id]
            out.text = detokenizer.output_text if out.finished else out.text + out.delta_text
            request_outputs.append(out)
        return OutputProcessorOutput(request_outputs, reqs_to_abort)
