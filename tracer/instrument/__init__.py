"""Instrumentation: hooks that wrap catalog targets, spans, extractors per engine, OpenTelemetry setup, exporters, plugins."""
