"""The live SGLang server: SGLang 0.5.23 on CPU from .venv-sglang, serving the bundled SmolLM2
converted to an HF folder (scripts/gguf_to_hf.py), both made by `make setup`.

    options = SglangOptions(trace_file=Path("/tmp/trace.jsonl"), max_total_tokens=384)
    with sglang_server(options) as server:
        OpenAI(base_url=server.base_url + "/v1", api_key="x").completions.create(...)

Runs `SGLANG_USE_CPU_ENGINE=1 python -m sglang.launch_server --device cpu --attention-backend
torch_native --disable-overlap-schedule --grammar-backend none --sleep-on-idle` with small memory
flags. Its processes: the HTTP server + TokenizerManager (the group leader), `sglang::scheduler`
and `sglang::detokenizer`, all in the one process group that stop() signals. servetrace's plugin
(the sglang.srt.plugins entry point of the editable install in .venv-sglang) traces it when
SERVETRACE_TRACE or SERVETRACE_OTLP is set. The sgl_kernel it imports is servetrace's CPU stand-in
(scripts/sgl_kernel_cpu_standin: one op in plain torch, NotImplementedError on any other).

Memory: --max-total-tokens fixes the KV pool in tokens (page size 1); a pool smaller than what a
few concurrent requests need makes the scheduler retract (preempt) a decoding request.
--mem-fraction-static does not size the pool when --max-total-tokens is given, but SGLang still
checks at startup that the fraction leaves room after the weights, measured on the machine's free
memory (mem_cache/kv_cache_configurator.py:3007-3058: the budget is free memory after loading minus
free memory before it x (1 - fraction); at or below 0 it raises, and below max_total_tokens it
shrinks the pool with only a warning, :3100). So the fraction must be high when other processes
hold memory: 0.05 failed with "Raise --mem-fraction-static above 0.053", and 0.3 failed in CI with
1.75 GB free ("above 0.347"). 0.9 passes while the 0.5 GB of weights fit in 90% of what was free. The bundled GGUF is not
served (SGLang 0.5.23 resolves a GGUF's tokenizer as an HF folder next to the file and fails, and
its GGUF quantization is CUDA/MUSA/NPU only), hence the converted HF folder.

Stopping: SIGTERM to the group reaches the scheduler and detokenizer directly (they exit -15);
the leader's SIGQUIT handler then sleeps 5 s ("crash diagnostics") and SIGKILLs its own tree, so
the leader's status is -9 and a stop takes about 6 s.

Readiness is /health with SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION=0: it answers 503 until the
server's warm-up is done and then 200, without sending a generate request of its own (with
generation on, each /health call would be a traced 1-token request).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tracer.live.process import LiveServerOptions, ServerProcess, ServerSpec, free_port, project_root, server_env, venv_python


def default_venv() -> Path:
    return project_root() / ".venv-sglang"


def default_log_dir() -> Path:
    return project_root() / ".cache" / "sglang"


@dataclass(frozen=True)
class SglangOptions(LiveServerOptions):
    venv: Path = field(default_factory=default_venv)
    max_total_tokens: int = 2048  # the KV pool, in tokens
    mem_fraction_static: float = 0.9  # only the startup check (see above); the pool is max_total_tokens
    max_running_requests: int = 8
    chunked_prefill_size: int = 512
    context_length: int = 2048
    # SGLANG_INIT_NEW_TOKEN_RATIO (SGLang's default 0.7): the share of a running request's
    # max_new_tokens the scheduler reserves when it admits more. Lower, it admits more than the
    # pool can finish, so decoding retracts. Seen: --max-total-tokens 300, ratio 0.1, 6 concurrent
    # completions (20-token prompts, max_tokens 100) -> one "KV cache pool is full. Retract
    # requests" (with 0.7 and the same pool the scheduler ran them 2 at a time, no retraction).
    # Requests with ignore_eos reserve their whole max_new_tokens and are never over-admitted.
    init_new_token_ratio: float | None = None
    startup_timeout_s: float = 180.0
    stop_grace_s: float = 20.0


def check_installed(options: SglangOptions) -> Path:
    """The venv's python, or a ServerError saying what to run."""
    return venv_python(options.venv, options.model, "SGLang")


def sglang_spec(options: SglangOptions) -> ServerSpec:
    python = check_installed(options)
    port = options.port if options.port is not None else free_port(options.host)
    argv = [
        str(python), "-m", "sglang.launch_server",
        "--model-path", str(options.model),
        "--served-model-name", options.served_model_name,
        "--host", options.host, "--port", str(port),
        "--device", "cpu",
        "--attention-backend", "torch_native",
        "--disable-overlap-schedule",
        "--grammar-backend", "none",
        "--sleep-on-idle",
        "--dtype", options.dtype,
        "--max-total-tokens", str(options.max_total_tokens),
        "--mem-fraction-static", str(options.mem_fraction_static),
        "--max-running-requests", str(options.max_running_requests),
        "--chunked-prefill-size", str(options.chunked_prefill_size),
        "--context-length", str(options.context_length),
        *options.extra_args,
    ]
    env = {
        "SGLANG_USE_CPU_ENGINE": "1",
        "SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION": "0",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if options.init_new_token_ratio is not None:
        env["SGLANG_INIT_NEW_TOKEN_RATIO"] = str(options.init_new_token_ratio)
    env, unset = server_env(env, options.trace_file, options.otlp_endpoint, options.env)
    log_path = options.log_path or default_log_dir() / f"server-{port}.log"
    return ServerSpec(
        name="sglang", argv=argv, host=options.host, port=port, log_path=log_path, env=env,
        unset_env=unset, cwd=project_root(), ready_path="/health",
        startup_timeout_s=options.startup_timeout_s, stop_grace_s=options.stop_grace_s,
    )


def sglang_server(options: SglangOptions | None = None) -> ServerProcess:
    """A not-yet-started server; `with sglang_server(opts) as server:` starts it and waits."""
    return ServerProcess(sglang_spec(options or SglangOptions()))
