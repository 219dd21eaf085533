"""oneDNN prepacked linear layers (engine/cpu_gemm.py): the same products as F.linear, weights packed once."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine import cpu_gemm, omp_env
from engine.attention import AttentionMetadata
from engine.model import LlamaConfig, LlamaForCausalLM
from engine.model_runner import ModelRunner

pytestmark = pytest.mark.skipif(not cpu_gemm.onednn_available(), reason="this torch build has no oneDNN (mkldnn) linear")

TINY = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, max_position_embeddings=64, tie_word_embeddings=True)


@pytest.mark.parametrize("rows", [1, 8, 100])
def test_prepacked_linear_computes_x_times_w_transposed(rows):
    torch.manual_seed(rows)
    weight = torch.randn(200, 64)
    x = torch.randn(rows, 64)
    torch.testing.assert_close(cpu_gemm.PrepackedLinear(weight)(x), F.linear(x, weight), atol=1e-5, rtol=1e-5)


def test_prepacked_linear_takes_a_strided_input_and_bfloat16():
    torch.manual_seed(0)
    weight = torch.randn(48, 64)
    x = torch.randn(8, 130)[:, 3:67]  # not contiguous
    torch.testing.assert_close(cpu_gemm.PrepackedLinear(weight)(x), F.linear(x, weight), atol=1e-5, rtol=1e-5)
    xb, wb = x.bfloat16(), weight.bfloat16()
    torch.testing.assert_close(cpu_gemm.PrepackedLinear(wb)(xb).float(), F.linear(xb, wb).float(), atol=5e-2, rtol=1e-2)


def _logits(model: LlamaForCausalLM, runner: ModelRunner, ids: list[int]) -> torch.Tensor:
    metadata = AttentionMetadata(
        slot_mapping=torch.arange(4, 4 + len(ids)), query_start_loc=torch.tensor([0, len(ids)]),
        seq_lens=torch.tensor([len(ids)]), block_tables=torch.tensor([[1, 2, 3]]), positions=torch.arange(len(ids)),
    )
    with torch.no_grad():
        return model.compute_logits(model(torch.tensor(ids), torch.arange(len(ids)), metadata, runner.kv_caches))


def test_runner_packs_every_linear_on_the_cpu_and_the_model_computes_the_same_logits():
    torch.manual_seed(0)
    plain = LlamaForCausalLM(TINY).eval()
    packed = LlamaForCausalLM(TINY).eval()
    packed.load_state_dict(plain.state_dict())
    ids = [5, 17, 90, 3, 42, 8, 8, 61, 1]
    plain_runner = ModelRunner(plain, TINY, 4, 8, "cpu", torch.float32, prepack_cpu_weights=False)
    packed_runner = ModelRunner(packed, TINY, 4, 8, "cpu", torch.float32)

    # 4 per layer (qkv, o, gate_up, down) + the tied lm_head; the embedding keeps its weight.
    assert sum(isinstance(m, cpu_gemm.PrepackedLinear) for m in packed.modules()) == 4 * TINY.num_hidden_layers + 1
    assert not any(isinstance(m, torch.nn.Linear) for m in packed.modules())
    assert torch.equal(packed.model.embed_tokens.weight, plain.model.embed_tokens.weight)
    torch.testing.assert_close(_logits(packed, packed_runner, ids), _logits(plain, plain_runner, ids), atol=1e-5, rtol=1e-5)


def test_runner_on_the_cpu_can_keep_the_plain_linears():
    model = LlamaForCausalLM(TINY).eval()
    ModelRunner(model, TINY, 4, 8, "cpu", torch.float32, prepack_cpu_weights=False)
    assert not any(isinstance(m, cpu_gemm.PrepackedLinear) for m in model.modules())


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        ({"avx512_bf16": True, "amx_bf16": False}, torch.bfloat16),
        ({"avx512_bf16": False, "amx_bf16": True}, torch.bfloat16),
        ({"avx512_bf16": False, "amx_bf16": False, "avx512_f": True}, torch.float32),
    ],
)
def test_default_dtype_is_bfloat16_only_on_cpus_with_native_bf16(monkeypatch, features, expected):
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: features, raising=False)
    cpu_gemm.cpu_has_native_bf16.cache_clear()
    try:
        assert cpu_gemm.default_dtype(torch.device("cpu")) == expected
        assert cpu_gemm.default_dtype(torch.device("cuda")) == torch.bfloat16
    finally:
        cpu_gemm.cpu_has_native_bf16.cache_clear()


def test_without_torchs_probe_the_flags_come_from_proc_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.delattr(torch._C._cpu, "_get_cpu_capability", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(cpu_gemm, "Path", lambda _: cpuinfo)
    cpu_gemm.cpu_has_native_bf16.cache_clear()
    try:
        cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f\n")
        assert not cpu_gemm.cpu_has_native_bf16()
        cpu_gemm.cpu_has_native_bf16.cache_clear()
        cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
        assert cpu_gemm.cpu_has_native_bf16()
    finally:
        cpu_gemm.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize(("num_tokens", "device", "inside"), [(1, "cpu", 1), (cpu_gemm.SERIAL_STEP_MAX_TOKENS, "cpu", 1),
                                                               (cpu_gemm.SERIAL_STEP_MAX_TOKENS + 1, "cpu", 2), (1, "cuda", 2)])
def test_a_small_cpu_step_computes_on_one_thread_and_the_count_comes_back(num_tokens, device, inside):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with cpu_gemm.compute_threads_for(num_tokens, torch.device(device), passive_wait=True):
            assert torch.get_num_threads() == inside
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), cpu_gemm.compute_threads_for(num_tokens, torch.device(device), passive_wait=True):
            raise RuntimeError("a failed step")
        assert torch.get_num_threads() == 2  # restored even when the step raises
    finally:
        torch.set_num_threads(before)


def test_with_spinning_openmp_workers_a_small_step_keeps_every_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with cpu_gemm.compute_threads_for(1, torch.device("cpu"), passive_wait=False):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_wait_policy_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert omp_env.omp_waits_passively()
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert not omp_env.omp_waits_passively()
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert not omp_env.omp_waits_passively()


@pytest.mark.parametrize(("spin_count", "passive"), [(None, True), ("0", True), ("10000", False), ("10k", False),
                                                     ("infinite", False), ("not a number", True)])
def test_a_passive_policy_with_a_spin_count_is_not_passive(monkeypatch, spin_count, passive):
    # libgomp spins GOMP_SPINCOUNT rounds before a worker sleeps, whatever OMP_WAIT_POLICY says (a value it
    # rejects leaves PASSIVE's 0): those workers are awake between a step's regions.
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    if spin_count is None:
        monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    else:
        monkeypatch.setenv("GOMP_SPINCOUNT", spin_count)
    assert omp_env.omp_waits_passively() is passive
