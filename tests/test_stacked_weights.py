"""Checkpoints store q/k/v and gate/up apart (Hugging Face names); the model holds them stacked."""
from __future__ import annotations

import pytest
import torch

from engine.model import stack_hf_weights


def test_hf_weights_are_stacked_into_qkv_and_gate_up_in_shard_order():
    q, k, v = torch.full((4, 2), 1.0), torch.full((2, 2), 2.0), torch.full((2, 2), 3.0)
    gate, up = torch.full((3, 2), 4.0), torch.full((3, 2), 5.0)
    stacked = stack_hf_weights({
        "model.layers.0.self_attn.q_proj.weight": q, "model.layers.0.self_attn.k_proj.weight": k,
        "model.layers.0.self_attn.v_proj.weight": v, "model.layers.0.mlp.gate_proj.weight": gate,
        "model.layers.0.mlp.up_proj.weight": up, "model.norm.weight": torch.ones(2),
    })
    assert set(stacked) == {"model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.mlp.gate_up_proj.weight", "model.norm.weight"}
    assert torch.equal(stacked["model.layers.0.self_attn.qkv_proj.weight"], torch.cat([q, k, v]))
    assert torch.equal(stacked["model.layers.0.mlp.gate_up_proj.weight"], torch.cat([gate, up]))


def test_a_checkpoint_missing_one_shard_of_a_stacked_weight_names_it():
    with pytest.raises(ValueError, match=r"model.layers.3.self_attn.v_proj.weight"):
        stack_hf_weights({
            "model.layers.3.self_attn.q_proj.weight": torch.zeros(4, 2),
            "model.layers.3.self_attn.k_proj.weight": torch.zeros(2, 2),
        })
