"""servetrace's tracer: the hop catalog, one hook mechanism for our engine, vLLM and SGLang,
OpenTelemetry export, replay, the TUI and the site builder."""
