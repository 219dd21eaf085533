"""Tokenizer and chat template: the request.render hop.

Mirrors: vllm.renderers.base:BaseRenderer.render_cmpl_async, vllm.renderers.base:BaseRenderer.render_chat_async (vllm 0.33.0)
The rendering half: text or messages in, validated prompt token ids out. The tokenizer itself is Hugging Face's,
read from the GGUF metadata or from an HF directory.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


class PromptError(ValueError):
    """The prompt cannot be served (empty, too long, malformed messages)."""


class Tokenizer:
    def __init__(self, model_path: str, max_model_len: int | None = None) -> None:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        path = Path(model_path)
        if not path.exists():
            raise FileNotFoundError(f"model path does not exist: {path}")
        if path.is_file():
            self.hf = _load_gguf_tokenizer(path)
        else:
            self.hf = AutoTokenizer.from_pretrained(str(path))
        self.max_model_len = max_model_len
        self.eos_token_id: int | None = self.hf.eos_token_id
        self.vocab_size = len(self.hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def render_completion(self, prompt: str | list[int]) -> list[int]:
        """A completion prompt (text or token ids) -> validated token ids."""
        # Mirrors: vllm.renderers.online_renderer:OnlineRenderer.render_completion (vllm 0.33.0)
        if isinstance(prompt, str):
            token_ids = self.encode(prompt)
        elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            token_ids = list(prompt)
            bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
            if bad:
                raise PromptError(f"token ids out of the vocabulary (0..{self.vocab_size - 1}): {bad[:5]}")
        else:
            raise PromptError("prompt must be a string or a list of token ids")
        return self._validate(token_ids)

    def render_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Chat messages -> token ids through the model's chat template (with the generation prompt)."""
        # Mirrors: vllm.renderers.online_renderer:OnlineRenderer.render_chat (vllm 0.33.0)
        if not isinstance(messages, list) or not messages:
            raise PromptError("messages must be a non-empty list")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise PromptError(f"messages[{i}] must be an object with 'role' and 'content'")
            if not isinstance(message["content"], str):
                raise PromptError(f"messages[{i}].content must be a string")
        text = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self._validate(self.encode(text))

    def _validate(self, token_ids: list[int]) -> list[int]:
        if not token_ids:
            raise PromptError("the prompt is empty")
        if self.max_model_len is not None and len(token_ids) >= self.max_model_len:
            raise PromptError(
                f"the prompt has {len(token_ids)} tokens; the model's context is {self.max_model_len} tokens "
                "and at least one must be left for the output"
            )
        return token_ids


def _load_gguf_tokenizer(path: Path):
    """transformers rebuilds a GGUF's tokenizer from its metadata (about 9 s for SmolLM2); do that
    once and keep the result as tokenizer.json in a cache keyed by the file's identity."""
    from transformers import AutoTokenizer

    from engine.loader import cache_root, file_identity

    cache_dir = cache_root() / "tokenizers" / file_identity(path)
    if (cache_dir / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(cache_dir))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # transformers raises many types for a bad file
        raise ValueError(f"cannot read a tokenizer from {path}: {exc}") from exc
    tmp_dir = cache_dir.with_name(cache_dir.name + f".tmp{os.getpid()}")
    try:
        tokenizer.save_pretrained(str(tmp_dir))
        os.replace(tmp_dir, cache_dir)
    except OSError:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # a read-only cache only costs time
    return tokenizer


def default_model_path() -> str:
    """The model served when none is given: SERVETRACE_MODEL, else the bundled SmolLM2-135M GGUF."""
    from engine.loader import bundled_model_path

    return os.environ.get("SERVETRACE_MODEL") or bundled_model_path()
