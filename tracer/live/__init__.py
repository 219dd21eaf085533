"""Live upstream servers (vLLM's CPU build, SGLang) run as child processes for the end-to-end
tests and `servetrace demo --engine ...`: process.py is engine-agnostic, one module per engine."""
