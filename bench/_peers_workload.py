"""The token ids every engine in bench/peers_bench.py is fed: drawn once from a fixed seed, written to
one JSON file, read by each worker, so ours, vLLM, SGLang and llama.cpp compute on the same inputs.

- uniform: 128-token prompts, 128 output tokens each (ignore_eos); at concurrency c, c requests;
- mixed: prompts of 16..256 tokens, outputs of 16..128 tokens; at concurrency c, the first
  min(len, max(2, c)) requests of the set, at most c in flight (a batch that fills and drains unevenly).
Ids are drawn from the ordinary vocabulary (SmolLM2's special tokens are ids < 17; ids above
VOCAB_HIGH are left out too), so no prompt holds an end-of-text or a chat marker.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

VOCAB_LOW, VOCAB_HIGH = 100, 49_000
MIXED_SIZE = 32


@dataclass
class Item:
    """One measured unit: a workload at one concurrency."""

    workload: str  # "uniform" | "mixed"
    concurrency: int
    prompts: list[list[int]]
    max_tokens: list[int]

    @property
    def key(self) -> str:
        return f"{self.workload}@{self.concurrency}"

    @property
    def output_tokens(self) -> int:
        return sum(self.max_tokens)


def draw(seed: int = 0, prompt_len: int = 128, output_len: int = 128, mixed_size: int = MIXED_SIZE,
         mixed_prompt: tuple[int, int] = (16, 256), mixed_output: tuple[int, int] = (16, 128),
         max_requests: int = 32, serving: int = 48) -> dict:
    """The shared ids: `max_requests` uniform prompts, a mixed set of `mixed_size` requests, and
    `serving` more prompts of prompt_len for the serving levels (each level its own)."""
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(VOCAB_LOW, VOCAB_HIGH) for _ in range(n)]

    uniform = [ids(prompt_len) for _ in range(max_requests)]
    mixed_prompts = [ids(rng.randint(*mixed_prompt)) for _ in range(mixed_size)]
    mixed_outputs = [rng.randint(*mixed_output) for _ in range(mixed_size)]
    serving_prompts = [ids(prompt_len) for _ in range(serving)]
    return {"seed": seed, "prompt_len": prompt_len, "output_len": output_len, "uniform": uniform,
            "mixed_prompts": mixed_prompts, "mixed_max_tokens": mixed_outputs, "serving": serving_prompts}


def items(ids: dict, concurrencies: list[int], workloads: list[str]) -> list[Item]:
    out = []
    for workload in workloads:
        for c in concurrencies:
            if workload == "uniform":
                out.append(Item("uniform", c, ids["uniform"][:c], [ids["output_len"]] * c))
            else:
                n = min(len(ids["mixed_prompts"]), max(2, c))
                out.append(Item("mixed", c, ids["mixed_prompts"][:n], ids["mixed_max_tokens"][:n]))
    return out


def write(path: Path, ids: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ids))


def item_message(item: Item) -> dict:
    """What a worker is sent to run one item."""
    return asdict(item)
