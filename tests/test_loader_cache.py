"""Dequantized GGUF weights and the converted tokenizer are cached by file identity."""
from __future__ import annotations

import torch

from engine import loader
from engine.tokenizer import Tokenizer


def test_second_load_reads_the_cache_and_gives_identical_weights(tmp_path, monkeypatch, bundled_gguf):
    monkeypatch.setenv("SERVETRACE_CACHE", str(tmp_path))
    first, config = loader.load_model(bundled_gguf)
    cached = list((tmp_path / "weights").glob("*/model.safetensors"))
    assert len(cached) == 1
    second, config_again = loader.load_model(bundled_gguf)
    assert config_again == config
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_cached_tokenizer_renders_the_same_chat(tmp_path, monkeypatch, bundled_gguf):
    monkeypatch.setenv("SERVETRACE_CACHE", str(tmp_path))
    messages = [{"role": "user", "content": "héllo 🙂"}]
    fresh = Tokenizer(bundled_gguf).render_chat(messages)
    assert list((tmp_path / "tokenizers").glob("*/tokenizer.json"))
    assert Tokenizer(bundled_gguf).render_chat(messages) == fresh
