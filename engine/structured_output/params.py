"""What a request asks to be constrained to, its cache key, and the validation that makes bad input a 400.

The fields are vLLM 0.33's StructuredOutputsParams (vllm/sampling_params.py:102-111); the HTTP
layer fills them from `structured_outputs` or `response_format` (engine/protocol.py).
"""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass


class StructuredOutputError(ValueError):
    """The constraint cannot be served: invalid JSON schema, a regex xgrammar cannot compile, no choices."""


class StructuredOutputOptions(enum.Enum):
    """Mirrors: vllm.v1.structured_output.backend_types:StructuredOutputOptions (vllm 0.33.0)"""

    JSON = enum.auto()
    JSON_OBJECT = enum.auto()
    REGEX = enum.auto()
    GRAMMAR = enum.auto()
    CHOICE = enum.auto()


# (kind, spec): the compile cache's key (vLLM: StructuredOutputKey).
StructuredOutputKey = tuple[StructuredOutputOptions, str]


@dataclass
class StructuredOutputsParams:
    """Mirrors: vllm.sampling_params:StructuredOutputsParams (vllm 0.33.0)
    Exactly one constraint is set (vLLM's __post_init__ rule). structural_tag is not served."""

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False

    def __post_init__(self) -> None:
        count = sum(v is not None for v in (self.json, self.regex, self.choice, self.grammar, self.json_object))
        if count > 1:
            raise StructuredOutputError(
                "You can only use one kind of structured outputs constraint ('json', 'regex', 'choice', "
                f"'grammar' or 'json_object') but {count} are specified"
            )
        if count < 1:
            raise StructuredOutputError("You must use one kind of structured outputs constraint but none are specified")

    @property
    def kind(self) -> str:
        """The constraint's kind as spans name it: json, json_object, regex, choice, grammar."""
        return get_structured_output_key(self)[0].name.lower()


def get_structured_output_key(params: StructuredOutputsParams) -> StructuredOutputKey:
    """Mirrors: vllm.v1.structured_output.request:get_structured_output_key (vllm 0.33.0)"""
    if params.json is not None:
        # Not sort_keys: property order is the order xgrammar's grammar emits them in.
        json_str = params.json if isinstance(params.json, str) else json.dumps(params.json)
        return StructuredOutputOptions.JSON, json_str
    if params.json_object:
        return StructuredOutputOptions.JSON_OBJECT, ""
    if params.regex is not None:
        return StructuredOutputOptions.REGEX, params.regex
    if params.choice is not None:
        return StructuredOutputOptions.CHOICE, json.dumps(params.choice)
    if params.grammar is not None:
        return StructuredOutputOptions.GRAMMAR, params.grammar
    raise StructuredOutputError("No valid structured output parameter found")


def choice_as_grammar(choice: list[str]) -> str:
    """Mirrors: vllm.v1.structured_output.utils:choice_as_grammar (vllm 0.33.0)"""
    escapes = {"\\": r"\\", '"': r"\"", "\n": r"\n", "\r": r"\r", "\t": r"\t"}

    def escape_char(ch: str) -> str:
        if ch in escapes:
            return escapes[ch]
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            return f"\\u{ord(ch):04x}"
        return ch

    return "root ::= " + " | ".join('"' + "".join(escape_char(c) for c in s) + '"' for s in choice)


def validate_structured_outputs(params: StructuredOutputsParams) -> None:
    """Raise StructuredOutputError for a constraint xgrammar cannot build, before the request is queued.

    Mirrors: vllm.v1.structured_output.backend_xgrammar:validate_xgrammar_grammar (vllm 0.33.0)
    (+ the empty-choice and empty-string checks of SamplingParams._validate_structured_outputs,
    vllm/sampling_params.py:1267-1290). Grammar parsing needs no tokenizer, so this runs in the
    API server before any compile, and a bad constraint is a 400, not a failed request later.
    """
    import xgrammar as xgr

    if isinstance(params.choice, list) and not params.choice:
        raise StructuredOutputError(f"Choice '{params.choice}' cannot be an empty list")
    if params.choice is not None and not all(isinstance(c, str) for c in params.choice):
        raise StructuredOutputError("every structured_outputs.choice must be a string")
    if isinstance(params.grammar, str) and not params.grammar.strip():
        raise StructuredOutputError("structured_outputs.grammar cannot be an empty string")
    if isinstance(params.json, str) and not params.json.strip():
        raise StructuredOutputError("structured_outputs.json cannot be an empty string")
    if params.json_object is False:
        raise StructuredOutputError("structured_outputs.json_object must be True if set")
    if params.regex is not None:
        if "\x00" in params.regex:
            raise StructuredOutputError("structured_outputs.regex must not contain a NUL character ('\\x00')")
        try:
            xgr.Grammar.from_regex(params.regex)
        except Exception as err:
            raise StructuredOutputError(f"Failed to transform regex into a grammar: {_first_line(err)}") from None
        return
    if params.choice is not None:
        try:
            xgr.Grammar.from_ebnf(choice_as_grammar(params.choice))
        except Exception as err:
            raise StructuredOutputError(f"Failed to transform choices into a grammar: {_first_line(err)}") from None
        return
    if params.json is not None:
        if isinstance(params.json, str):
            try:
                schema = json.loads(params.json)
            except json.JSONDecodeError:
                raise StructuredOutputError("Invalid JSON grammar specification.") from None
        else:
            schema = params.json
        if not isinstance(schema, (dict, bool)):
            raise StructuredOutputError(f"a JSON schema is an object or a boolean, got {type(schema).__name__}")
        try:
            xgr.Grammar.from_json_schema(json.dumps(schema))
        except Exception as err:
            raise StructuredOutputError(f"Failed to transform json schema into a grammar: {_first_line(err)}") from None
        return
    if params.grammar is not None:
        try:
            xgr.Grammar.from_ebnf(params.grammar)
        except Exception as err:
            raise StructuredOutputError(f"Invalid grammar specification: {_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
