"""servetrace's compact serving engine: small enough to read in an afternoon.

Layout follows nano-vllm (one idea per file) with vLLM V1 names, so a reader can map
each file to the upstream code it mirrors. Nothing here imports tracing or UI code.
"""
