"""Structured output (constrained decoding): JSON schema, regex, choice and grammar constraints.

Mirrors: vllm.v1.structured_output:StructuredOutputManager (vllm 0.33.0)
The design is vLLM 0.33's, one idea per file:
  params.py          the request fields (StructuredOutputsParams), the cache key, up-front validation;
  request.py         a request's constraint and its grammar, a Future until compiled;
  backend_xgrammar.py xgrammar: tokenizer info, compile, the per-request matcher;
  manager.py         async compile in a thread pool, cached by key; the batch bitmask (scheduler side);
                     grammar state advanced on accepted tokens, rolled back on rejected drafts;
  apply.py           the bitmask applied to the logits before sampling (model-runner side), 1 + k rows
                     per request with speculation;
  overlap.py         the synchronous step with the mask filled while the forward pass runs (vLLM's order);
  scheduling.py      the scheduler's grammar steps (the waiting-for-grammar gate, advancing on kept tokens);
  sglang_grammar.py  SGLang's grammar queue and token FSM, for cache_mode "sglang";
  jump_forward.py    SGLang's earlier jump-forward decoding, retokenized at the boundary (off by
                     default, as in SGLang 0.5.23).
"""
from engine.structured_output.params import (
    StructuredOutputError,
    StructuredOutputOptions,
    StructuredOutputsParams,
    validate_structured_outputs,
)

__all__ = ["StructuredOutputError", "StructuredOutputOptions", "StructuredOutputsParams", "validate_structured_outputs"]
