"""llama.cpp's batch-1 decode on the bundled GGUF as shipped (Q4_1): run by bench/peers_bench.py in the
venv where llama-cpp-python was built from source (.cache/llamacpp/venv). Feeds the shared prompt's
token ids, then decodes greedily one token per llama_decode call and times each call.

    python bench/_peers_llamacpp.py GGUF --threads N --prompt-json FILE --tokens 128
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("gguf")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--prompt-json", required=True, help="the bench's workload file; its first uniform prompt")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import llama_cpp
    from llama_cpp import Llama

    prompt = json.load(open(args.prompt_json))["uniform"][0]
    llm = Llama(model_path=args.gguf, n_ctx=1024, n_batch=512, n_threads=args.threads, n_threads_batch=args.threads,
                verbose=False, logits_all=False)
    runs = []
    for _ in range(args.repeats):
        llm.reset()
        llm.eval(prompt)
        steps = []
        for _ in range(args.tokens):
            token = llm.sample(temp=0.0)  # greedy, outside the timed call
            start = time.perf_counter()
            llm.eval([token])
            steps.append(time.perf_counter() - start)
        runs.append(1000 * statistics.median(steps))
    print(json.dumps({"llama_cpp_python": llama_cpp.__version__, "threads": args.threads, "tokens": args.tokens,
                      "ms_per_step_runs": [round(r, 2) for r in runs], "ms_per_step": round(min(runs), 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
