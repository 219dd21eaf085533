"""bench/serve_profile.py's bookkeeping, on given samples and this process's own threads: a py-spy sample counts
for the innermost frame that names a kind (a forward nested in the step is the forward, h11 under starlette is
HTTP), and the engine thread is the busiest thread that is not the main one. No timing is asserted."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
import time
from pathlib import Path

SPEC = importlib.util.spec_from_file_location(
    "serve_profile", Path(__file__).resolve().parent.parent / "bench" / "serve_profile.py")
profile = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = profile
SPEC.loader.exec_module(profile)

LOOP = "thread (11): engine-busy-loop;Thread.run (threading.py:982);AsyncLLM._run_busy_loop (engine/async_engine.py:224)"
STEP = LOOP + ";LLMEngine.step (engine/llm_engine.py:207)"
MAIN = "thread (10): MainThread;run (tracer/commands/serve.py:79);Runner.run (asyncio/runners.py:118)"
SEND = (MAIN + ";StreamingResponse.stream_response (starlette/responses.py:258)"
        ";ServerErrorMiddleware.__call__.<locals>._send (starlette/middleware/errors.py:161)"
        ";RequestResponseCycle.send (uvicorn/protocols/http/h11_impl.py:503);Connection.send (h11/_connection.py:512)")


def test_py_spy_samples_count_for_their_innermost_kind(tmp_path: Path):
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join([
        STEP + ";ModelRunner.execute_model (engine/model_runner.py:156);LlamaForCausalLM.forward (engine/model.py:188)"
               ";Attention.forward (engine/model.py:121) 40",
        STEP + ";ModelRunner.execute_model (engine/model_runner.py:156);ModelRunner._sample (engine/model_runner.py:300) 3",
        STEP + ";Scheduler.schedule (engine/scheduler.py:120) 2",
        STEP + ";OutputProcessor.process_outputs (engine/output_processor.py:80)"
               ";IncrementalDetokenizer.update (engine/detokenizer.py:40) 1",
        STEP + ";copy (copy.py:60) 1",
        LOOP + ";Condition.wait_for (threading.py:360);Condition.wait (threading.py:320) 5",
        SEND + " 4",
        MAIN + " 6",
        MAIN + ";Queue.get (asyncio/queues.py:158) 2",
        MAIN + ";OpenAIServing._completion_stream (engine/server.py:230);BaseModel.model_dump_json (pydantic/main.py:470) 1",
    ]) + "\n")
    got = profile.read_py_spy(raw)
    assert got["engine_samples"] == {"forward": 40, "runner host work (input prep, sampling)": 3, "scheduler": 2,
                                     "output processing + detokenize": 1, "other step work": 1, "waiting for work": 5}
    assert got["main_busy_samples"] == {"uvloop (C: event loop, socket I/O)": 6, "uvicorn + h11 (HTTP)": 4,
                                        "asyncio / threads (to_thread)": 2, "pydantic": 1}


def test_the_engine_thread_is_the_busiest_thread_but_the_main_one():
    stop = threading.Event()
    started = threading.Barrier(3)

    def spin() -> None:  # busy about half the time, outside the GIL; the main thread below is busy all along
        data = b"x" * (1 << 20)
        started.wait()
        while not stop.is_set():
            hashlib.sha256(data).digest()  # releases the GIL for large inputs
            time.sleep(0.002)

    def sleep() -> None:
        started.wait()
        stop.wait()

    threads = [threading.Thread(target=spin), threading.Thread(target=sleep)]
    for thread in threads:
        thread.start()
    started.wait()
    before, start = profile.thread_snapshot(os.getpid()), time.perf_counter()
    deadline = start + 0.3
    while time.perf_counter() < deadline:  # the main thread is busy too, and must not be taken for the engine's
        sum(range(1000))
    after, wall_s = profile.thread_snapshot(os.getpid()), time.perf_counter() - start
    stop.set()
    for thread in threads:
        thread.join()
    shares = profile.thread_shares(os.getpid(), before, after, wall_s)
    assert shares["engine_tid"] == threads[0].native_id
    for name in ("engine", "main"):
        parts = shares[name]
        assert parts["on_cpu"] > 0 and parts["asleep"] >= 0
        assert abs(parts["on_cpu"] + parts["run_queue"] + parts["asleep"] - 1) < 0.02 or parts["asleep"] == 0
