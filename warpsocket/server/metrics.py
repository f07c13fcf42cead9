"""Prometheus metrics of one hub, in a registry of its own (so hubs never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class HubMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connections = Gauge("warpsocket_connections", "Open WebSocket connections", registry=r)
        self.sessions = Gauge("warpsocket_sessions", "Sessions, attached or not", registry=r)
        self.rooms = Gauge("warpsocket_rooms", "Rooms with at least one session", registry=r)
        self.messages_in = Counter(
            "warpsocket_messages_in", "Envelopes received, by type", ["type"], registry=r
        )
        self.messages_out = Counter(
            "warpsocket_messages_out",
            "Envelope deliveries sent, by type (a broadcast counts once per recipient)",
            ["type"],
            registry=r,
        )
        self.bytes_in = Counter("warpsocket_bytes_in", "Payload bytes received", registry=r)
        self.bytes_out = Counter("warpsocket_bytes_out", "Payload bytes sent", registry=r)
        self.encodes = Counter(
            "warpsocket_encodes",
            "Envelopes encoded (a broadcast is encoded once per codec in use)",
            registry=r,
        )
        self.protocol_errors = Counter(
            "warpsocket_protocol_errors",
            "Invalid frames or envelopes, by code",
            ["code"],
            registry=r,
        )
        self.acks_pending = Gauge(
            "warpsocket_acks_pending", "Acknowledged direct sends awaiting the client", registry=r
        )
        self.retries = Counter(
            "warpsocket_retries", "Re-sent unacknowledged direct messages", registry=r
        )
        self.duplicates = Counter(
            "warpsocket_duplicates", "Client messages recognised as retries", registry=r
        )
        self.resumes = Counter(
            "warpsocket_resumes", "Handshakes by outcome", ["outcome"], registry=r
        )
        self.rejected_handshakes = Counter(
            "warpsocket_rejected_handshakes",
            "Refused WebSocket handshakes, by reason",
            ["reason"],
            registry=r,
        )
        self.disconnects = Counter(
            "warpsocket_disconnects", "Closed connections, by close code", ["code"], registry=r
        )
        self.handler_latency = Histogram(
            "warpsocket_handler_seconds",
            "Time spent in application handlers",
            ["event"],
            registry=r,
        )
