"""The trace format: reading and writing OTLP/JSON lines, Perfetto export."""
