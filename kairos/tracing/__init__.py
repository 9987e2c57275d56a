"""Distributed tracing: W3C Trace Context and OpenTelemetry spans built by hand (docs/tracing.md)."""
