"""Side-by-side replay: one workload through our scheduler, vLLM's and SGLang's prefix cache, compared step by step."""
