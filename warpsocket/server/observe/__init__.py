"""Observability: traces, slow-message alerts, the live inspector, structured logs.

Everything here is off unless configured, and when off costs the hot path
nothing: ``install`` wraps the hub's parts at construction only for what is
switched on (docs/observability.md).
"""
