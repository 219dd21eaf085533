"""Llama-architecture decoder (SmolLM2, Llama 2/3 shapes) reading and writing a paged KV cache.

Written to be read top to bottom in the style of gpt-fast; parameter names follow Hugging Face
(model.layers.N.self_attn.q_proj ...) so safetensors checkpoints load without renaming.
The batch is flat: tokens of several requests back to back, described by AttentionMetadata.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine import cpu_elementwise
from engine.attention import paged_attention, write_kv_cache
from engine.attention_metadata import AttentionMetadata


@dataclass
class LlamaConfig:
    """Hyperparameters of a Llama-architecture model (names as in transformers' LlamaConfig)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """rms_norm(x); with a residual, (rms_norm(residual + x), residual + x), the residual updated in place.

        Mirrors: vllm.model_executor.layers.layernorm:RMSNorm.forward_native (vllm 0.33.0), the
        residual form being vLLM's fused_add_rms_norm.
        """
        if residual is not None:
            out = cpu_elementwise.add_rms_norm(x, residual, self.weight, self.eps)  # bf16 on the CPU: one C pass
            if out is not None:
                return out, residual
            residual = residual + x
            return self.forward(residual), residual
        # Normalise in float32 even under bfloat16, as transformers' LlamaRMSNorm does. F.rms_norm
        # is that same x * rsqrt(mean(x^2) + eps) as one op instead of four (bit-equal here, in
        # float32 and bfloat16: tests/test_model.py).
        out = cpu_elementwise.rms_norm(x, self.weight, self.eps)  # bf16 on the CPU: one C pass, same roundings
        if out is not None:
            return out
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for the 'rotate half' RoPE layout that transformers' Llama uses."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self._inv_freq(torch.device("cpu")), persistent=False)

    def _inv_freq(self, device: torch.device) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        return 1.0 / (self.theta**exponents)

    def _apply(self, fn, recurse=True):
        # model.to(bfloat16) would round the frequencies too (0.35 rad off at position 255 for
        # SmolLM2): keep them float32, as transformers does, on whatever device the model moves to.
        super()._apply(fn, recurse)
        self.inv_freq = self._inv_freq(self.inv_freq.device)
        return self

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed_sin [T, 1, head_dim] for apply_rotary: signed_sin is sin with its first half negated."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)  # [T, head_dim]
        sin = angles.sin().to(dtype)
        half = sin.shape[-1] // 2
        signed_sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
        return angles.cos().to(dtype)[:, None, :], signed_sin[:, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, head_dim]; cos / signed_sin [T, 1, head_dim] (RotaryEmbedding.forward).

    transformers' x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1). Speed trick: the
    sign moves onto sin, once per step (x2 * -s is bit-equal to -x2 * s), and cat(x2, x1) is one
    roll: 3 ops per layer instead of 6 (1.3-1.7x less rotary time at 8-32 decode rows,
    bench/results/cpu_kernels.md, "rotary").
    """
    return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = 1.0 / math.sqrt(self.head_dim)
        hidden = config.hidden_size
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        # q, k and v as one matmul (vLLM: QKVParallelLinear): one GEMM call instead of three.
        self.qkv_proj = nn.Linear(hidden, self.q_size + 2 * self.kv_size, bias=False)
        self.o_proj = nn.Linear(self.q_size, hidden, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_metadata: AttentionMetadata,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        qkv = self.qkv_proj(x)
        k_cache, v_cache = kv_cache
        # bf16 on the CPU: rotary and the KV write as one C pass, same roundings (cpu_elementwise.rotary_write_kv).
        q = cpu_elementwise.rotary_write_kv(qkv, cos, sin, attn_metadata.slot_mapping, k_cache, v_cache, self.num_heads)
        if q is None:
            # Rotate q and k heads in one go: they share the positions.
            qk = qkv[:, : self.q_size + self.kv_size].view(num_tokens, self.num_heads + self.num_kv_heads, self.head_dim)
            q, k = apply_rotary(qk, cos, sin).split([self.num_heads, self.num_kv_heads], dim=1)
            v = qkv[:, self.q_size + self.kv_size :].view(num_tokens, self.num_kv_heads, self.head_dim)
            write_kv_cache(k, v, k_cache, v_cache, attn_metadata.slot_mapping)
        out = paged_attention(q, k_cache, v_cache, attn_metadata, self.scale)
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        # gate and up as one matmul (vLLM: MergedColumnParallelLinear).
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        activated = cpu_elementwise.silu_and_mul(gate_up)  # bf16 on the CPU: one C pass, same roundings
        if activated is None:
            gate, up = gate_up.chunk(2, dim=-1)
            activated = F.silu(gate) * up
        return self.down_proj(activated)


class DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_metadata: AttentionMetadata,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden, residual) -> (this layer's MLP output, the residual stream before it).

        Mirrors: vllm.model_executor.models.llama:LlamaDecoderLayer.forward (vllm 0.33.0)
        The residual add is deferred into the next norm (RMSNorm's residual form): x + attn(norm(x))
        then + mlp(norm(.)), as transformers computes it, with one op fewer per norm.
        """
        if residual is None:  # the first layer: the embeddings are the residual stream
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, cos, sin, attn_metadata, kv_cache)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn_metadata: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """input_ids/positions [T] (flat batch) -> final hidden states [T, hidden]."""
        hidden = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(positions, hidden.dtype)
        residual = None
        for layer, kv_cache in zip(self.model.layers, kv_caches, strict=True):
            hidden, residual = layer(hidden, residual, cos, sin, attn_metadata, kv_cache)
        return self.model.norm(hidden, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> float32 logits [N, vocab]."""
        return self.lm_head(hidden).float()


# Checkpoints (Hugging Face names) store q/k/v and gate/up apart; this model stacks them.
# Mirrors: vllm.model_executor.models.llama:LlamaModel.hf_to_vllm_mapper (vllm 0.33.0) (a WeightsMapper whose
# orig_to_new_stacked that model's load_weights applies).
STACKED_PARAMS = (
    ("self_attn.qkv_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj")),
)


def stack_hf_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face Llama state dict with q/k/v and gate/up concatenated into this model's names.

    Weights already stacked pass through. A layer missing its first shard surfaces as a missing
    fused weight in the loader's check; missing a later one is an error here.
    """
    stacked = dict(state_dict)
    for name in list(state_dict):
        for fused, shards in STACKED_PARAMS:
            if not name.endswith(f"{shards[0]}.weight"):
                continue
            prefix = name[: -len(f"{shards[0]}.weight")]
            shard_names = [f"{prefix}{shard}.weight" for shard in shards]
            absent = [n for n in shard_names if n not in state_dict]
            if absent:
                raise ValueError(f"checkpoint has {name} but not {', '.join(absent)}")
            stacked[f"{prefix}{fused}.weight"] = torch.cat([state_dict[n] for n in shard_names], dim=0)
            for n in shard_names:
                del stacked[n]
    return stacked
