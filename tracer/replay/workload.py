"""Replay workloads: the JSONL format, its reader/writer, and the generators.

One JSON object per line:

    {"id": "r0", "arrival_step": 0, "prompt_token_ids": [...], "max_tokens": 16,
     "priority": 0, "output_token_ids": [...]}

- ``id`` (string, unique) and ``max_tokens`` (>= 1) are required.
- Arrival: ``arrival_step`` (an integer engine step), or ``arrival_time`` in seconds, which is
  mapped to a step as ``floor(arrival_time / step_seconds)`` (a nominal step duration, 20 ms by
  default). Replay counts arrivals in steps so every engine sees the same queue at every step,
  whatever its wall-clock speed.
- Prompt: ``prompt_token_ids`` (list of ints) or ``prompt`` (text, tokenized with our engine's
  tokenizer when the workload is loaded).
- ``output_token_ids`` (optional) are forced as the model's samples. When absent, each request
  gets deterministic pseudo-random ids seeded by its id, so no model is needed. Requests run with
  ignore_eos and finish by ``max_tokens``.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

DEFAULT_STEP_SECONDS = 0.02
# Token ids drawn by the generators stay clear of the special ids at the start of the vocabulary.
TOKEN_ID_LOW, TOKEN_ID_HIGH = 100, 49_000


class WorkloadError(ValueError):
    """A workload file or generator argument that cannot be replayed."""


@dataclass
class WorkloadRequest:
    id: str
    arrival_step: int
    prompt_token_ids: list[int]
    max_tokens: int
    priority: int = 0
    output_token_ids: list[int] = field(default_factory=list)

    def forced_output(self) -> list[int]:
        """The ids that stand in for the model's samples (exactly max_tokens of them)."""
        if self.output_token_ids:
            return self.output_token_ids[: self.max_tokens]
        return pseudo_random_ids(self.id, self.max_tokens)

    def to_json(self) -> dict:
        data = asdict(self)
        if not data["output_token_ids"]:
            del data["output_token_ids"]
        return data


def pseudo_random_ids(seed_text: str, count: int) -> list[int]:
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "little")
    rng = random.Random(seed)
    return [rng.randrange(TOKEN_ID_LOW, TOKEN_ID_HIGH) for _ in range(count)]


# -- reading and writing ----------------------------------------------------------------


def parse_request(
    obj: object,
    where: str,
    step_seconds: float = DEFAULT_STEP_SECONDS,
    tokenize: Callable[[str], list[int]] | None = None,
) -> WorkloadRequest:
    if not isinstance(obj, dict):
        raise WorkloadError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - {
        "id", "arrival_step", "arrival_time", "prompt_token_ids", "prompt", "max_tokens", "priority", "output_token_ids"
    }
    if unknown:
        raise WorkloadError(f"{where}: unknown field(s) {sorted(unknown)}")
    request_id = obj.get("id")
    if not isinstance(request_id, (str, int)) or isinstance(request_id, bool) or str(request_id) == "":
        raise WorkloadError(f"{where}: 'id' must be a non-empty string")
    request_id = str(request_id)

    if "arrival_step" in obj:
        arrival_step = obj["arrival_step"]
        if not _is_int(arrival_step) or arrival_step < 0:
            raise WorkloadError(f"{where}: 'arrival_step' must be an integer >= 0")
    elif "arrival_time" in obj:
        arrival_time = obj["arrival_time"]
        if not isinstance(arrival_time, (int, float)) or isinstance(arrival_time, bool) or arrival_time < 0:
            raise WorkloadError(f"{where}: 'arrival_time' must be a number of seconds >= 0")
        arrival_step = math.floor(arrival_time / step_seconds)
    else:
        arrival_step = 0

    if "prompt_token_ids" in obj:
        prompt_ids = obj["prompt_token_ids"]
        if not isinstance(prompt_ids, list) or not prompt_ids or not all(_is_int(t) and t >= 0 for t in prompt_ids):
            raise WorkloadError(f"{where}: 'prompt_token_ids' must be a non-empty list of token ids (ints >= 0)")
    elif "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"]:
            raise WorkloadError(f"{where}: 'prompt' must be non-empty text")
        if tokenize is None:
            raise WorkloadError(f"{where}: a text 'prompt' needs a tokenizer; give prompt_token_ids instead")
        prompt_ids = tokenize(obj["prompt"])
        if not prompt_ids:
            raise WorkloadError(f"{where}: 'prompt' tokenizes to nothing")
    else:
        raise WorkloadError(f"{where}: give 'prompt_token_ids' or 'prompt'")

    outputs = obj.get("output_token_ids", [])
    if not isinstance(outputs, list) or not all(_is_int(t) and t >= 0 for t in outputs):
        raise WorkloadError(f"{where}: 'output_token_ids' must be a list of token ids (ints >= 0)")
    max_tokens = obj.get("max_tokens", len(outputs) or None)
    if not _is_int(max_tokens) or max_tokens < 1:
        raise WorkloadError(f"{where}: 'max_tokens' must be an integer >= 1")
    if outputs and len(outputs) < max_tokens:
        raise WorkloadError(
            f"{where}: {len(outputs)} forced output ids cannot stand in for max_tokens={max_tokens} samples"
        )
    priority = obj.get("priority", 0)
    if not _is_int(priority):
        raise WorkloadError(f"{where}: 'priority' must be an integer")
    return WorkloadRequest(request_id, int(arrival_step), list(prompt_ids), int(max_tokens), int(priority), list(outputs))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_workload(
    path: str | Path,
    step_seconds: float = DEFAULT_STEP_SECONDS,
    tokenize: Callable[[str], list[int]] | None = None,
) -> list[WorkloadRequest]:
    """Read a JSONL workload; requests are returned in arrival order (stable for equal steps)."""
    path = Path(path)
    if not path.is_file():
        raise WorkloadError(f"workload file not found: {path}")
    requests: list[WorkloadRequest] = []
    seen: set[str] = set()
    with path.open() as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{line_number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise WorkloadError(f"{where}: not valid JSON ({exc.msg})") from None
            request = parse_request(obj, where, step_seconds, tokenize)
            if request.id in seen:
                raise WorkloadError(f"{where}: duplicate request id {request.id!r}")
            seen.add(request.id)
            requests.append(request)
    if not requests:
        raise WorkloadError(f"{path}: the workload is empty")
    return sorted(requests, key=lambda r: r.arrival_step)


def save_workload(requests: Iterable[WorkloadRequest], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for request in requests:
            handle.write(json.dumps(request.to_json()) + "\n")
    return path


# -- generators -------------------------------------------------------------------------


def _tokens(rng: random.Random, count: int) -> list[int]:
    return [rng.randrange(TOKEN_ID_LOW, TOKEN_ID_HIGH) for _ in range(count)]


def shared_prefix(
    num_requests: int = 24, num_system_prompts: int = 3, system_len: int = 96, suffix_len: tuple[int, int] = (4, 40),
    max_tokens: tuple[int, int] = (4, 24), arrival_every: int = 1, seed: int = 0,
) -> list[WorkloadRequest]:
    """Requests that start with one of a few shared system prompts: prefix-cache hits."""
    rng = random.Random(seed)
    systems = [_tokens(rng, system_len) for _ in range(num_system_prompts)]
    return [
        WorkloadRequest(
            id=f"sp{i}",
            arrival_step=(i // max(1, num_system_prompts)) * arrival_every,
            prompt_token_ids=systems[i % num_system_prompts] + _tokens(rng, rng.randint(*suffix_len)),
            max_tokens=rng.randint(*max_tokens),
        )
        for i in range(num_requests)
    ]


def multi_turn(
    num_conversations: int = 4, num_turns: int = 4, first_len: tuple[int, int] = (32, 80),
    user_len: tuple[int, int] = (8, 32), max_tokens: tuple[int, int] = (8, 24), seed: int = 0,
) -> list[WorkloadRequest]:
    """Chats whose turn t+1 prompt is turn t's prompt + its (forced) answer + a new user message.

    Turn t+1 arrives a fixed number of steps after turn t (enough for its decode to finish at
    one token per step, plus slack): replay has no feedback from finish to arrival.
    """
    rng = random.Random(seed)
    requests = []
    for c in range(num_conversations):
        history = _tokens(rng, rng.randint(*first_len))
        arrival = c
        for t in range(num_turns):
            request = WorkloadRequest(
                id=f"chat{c}.t{t}", arrival_step=arrival, prompt_token_ids=list(history),
                max_tokens=rng.randint(*max_tokens),
            )
            requests.append(request)
            history = history + request.forced_output() + _tokens(rng, rng.randint(*user_len))
            arrival += request.max_tokens + 4 + rng.randint(0, 4)
    return sorted(requests, key=lambda r: r.arrival_step)


def long_prompts(
    num_requests: int = 6, prompt_len: tuple[int, int] = (150, 400), max_tokens: tuple[int, int] = (4, 12),
    arrival_every: int = 2, seed: int = 0,
) -> list[WorkloadRequest]:
    """Prompts longer than a step's token budget: chunked prefill."""
    rng = random.Random(seed)
    return [
        WorkloadRequest(f"long{i}", i * arrival_every, _tokens(rng, rng.randint(*prompt_len)), rng.randint(*max_tokens))
        for i in range(num_requests)
    ]


def memory_pressure(
    num_requests: int = 10, prompt_len: tuple[int, int] = (20, 60), max_tokens: tuple[int, int] = (40, 80), seed: int = 0,
) -> list[WorkloadRequest]:
    """Many long-decoding requests at once: on a small KV pool they outgrow it and get preempted."""
    rng = random.Random(seed)
    return [
        WorkloadRequest(f"mp{i}", 0, _tokens(rng, rng.randint(*prompt_len)), rng.randint(*max_tokens))
        for i in range(num_requests)
    ]


def bursts(
    num_bursts: int = 4, burst_size: int = 8, gap_steps: int = 12, prompt_len: tuple[int, int] = (10, 60),
    max_tokens: tuple[int, int] = (4, 20), seed: int = 0,
) -> list[WorkloadRequest]:
    """Groups of requests that arrive on the same step, with quiet gaps between."""
    rng = random.Random(seed)
    return [
        WorkloadRequest(f"b{b}.{i}", b * gap_steps, _tokens(rng, rng.randint(*prompt_len)), rng.randint(*max_tokens))
        for b in range(num_bursts)
        for i in range(burst_size)
    ]


def priorities(
    num_requests: int = 16, levels: int = 3, prompt_len: tuple[int, int] = (10, 60), max_tokens: tuple[int, int] = (8, 40),
    seed: int = 0,
) -> list[WorkloadRequest]:
    """Mixed priorities (lower value = served first, as in vLLM) arriving over time."""
    rng = random.Random(seed)
    return [
        WorkloadRequest(
            f"p{i}", i // 2, _tokens(rng, rng.randint(*prompt_len)), rng.randint(*max_tokens), priority=rng.randrange(levels)
        )
        for i in range(num_requests)
    ]


# ShareGPT-like lengths: seeded lognormals with medians/spreads chosen to resemble the shape
# commonly reported for ShareGPT (long-tailed, inputs ~ a few hundred tokens, outputs a bit
# shorter). NOT fitted to the data set here; clipped to the given maxima.
SHAREGPT_INPUT_LOGNORMAL = (math.log(180), 1.0)
SHAREGPT_OUTPUT_LOGNORMAL = (math.log(120), 0.9)


def sharegpt_like(
    num_requests: int = 200, requests_per_step: float = 0.5, max_prompt_len: int = 1024, max_output_len: int = 256,
    seed: int = 0,
) -> list[WorkloadRequest]:
    """Lognormal prompt/output lengths and Poisson arrivals (requests_per_step on average)."""
    if requests_per_step <= 0:
        raise WorkloadError("requests_per_step must be > 0")
    rng = random.Random(seed)
    clock = 0.0
    requests = []
    for i in range(num_requests):
        prompt_len = min(max_prompt_len, max(4, round(rng.lognormvariate(*SHAREGPT_INPUT_LOGNORMAL))))
        output_len = min(max_output_len, max(1, round(rng.lognormvariate(*SHAREGPT_OUTPUT_LOGNORMAL))))
        requests.append(WorkloadRequest(f"sg{i}", int(clock), _tokens(rng, prompt_len), output_len))
        clock += rng.expovariate(requests_per_step)
    return requests


def mixed(seed: int = 0) -> list[WorkloadRequest]:
    """A little of everything: shared prefixes, long prompts and a burst, interleaved."""
    parts = [
        shared_prefix(num_requests=9, seed=seed),
        long_prompts(num_requests=3, seed=seed + 1),
        bursts(num_bursts=1, burst_size=6, seed=seed + 2),
    ]
    return sorted((r for part in parts for r in part), key=lambda r: r.arrival_step)


GENERATORS: dict[str, Callable[..., list[WorkloadRequest]]] = {
    "shared-prefix": shared_prefix,
    "multi-turn": multi_turn,
    "long-prompts": long_prompts,
    "memory-pressure": memory_pressure,
    "bursts": bursts,
    "priorities": priorities,
    "sharegpt": sharegpt_like,
    "mixed": mixed,
}


# The replay config a generated shape needs to show what it is for, written beside the workload
# as W.config.json by `servetrace workload gen` and read by `servetrace replay W.jsonl`.
# memory-pressure: ten requests that grow to ~60-140 tokens each (~4-9 blocks of 16) all at
# once outgrow 32 usable blocks; the default pool (255 blocks) never fills, so 0 preemptions.
GENERATOR_CONFIGS: dict[str, dict] = {
    "memory-pressure": {"block_size": 16, "num_blocks": 33, "max_num_seqs": 10},
}


def sidecar_config_path(workload_path: str | Path) -> Path:
    """W.jsonl -> W.config.json (beside it)."""
    path = Path(workload_path)
    return path.with_name(path.stem + ".config.json")


def save_sidecar_config(kind: str, workload_path: str | Path) -> Path | None:
    """Write the config `kind` needs beside the workload; remove a stale one when it needs none."""
    sidecar = sidecar_config_path(workload_path)
    config = GENERATOR_CONFIGS.get(kind)
    if config is None:
        sidecar.unlink(missing_ok=True)  # the file belonged to the workload this one replaced
        return None
    sidecar.write_text(json.dumps(config, indent=1) + "\n")
    return sidecar


def looks_like_workload(path: str | Path) -> bool:
    """True when the file's first record is a workload request, not an OTLP trace line (the
    explorer uses this to point at `servetrace replay` instead of failing on the file)."""
    try:
        with Path(path).open() as handle:
            first = next((line for line in handle if line.strip()), "")
    except (OSError, UnicodeDecodeError):
        return False
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        return False
    return (isinstance(obj, dict) and "resourceSpans" not in obj and "max_tokens" in obj
            and ("prompt_token_ids" in obj or "prompt" in obj))


def generate(kind: str, **kwargs) -> list[WorkloadRequest]:
    if kind not in GENERATORS:
        raise WorkloadError(f"unknown workload kind {kind!r}; choose from {', '.join(GENERATORS)}")
    return GENERATORS[kind](**kwargs)
