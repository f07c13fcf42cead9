"""Prometheus metrics of one hub, in a registry of its own (so hubs never collide)."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

# Upper bounds (seconds) of the delivery latency buckets; +Inf is implied.
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STREAM_KINDS = ("room", "broadcast", "direct")


class Traffic:
    """Per-message tallies kept as plain integers.

    They are touched several times per message on the hot path, where a
    prometheus_client counter costs a lock and a label lookup each time; the
    registry reads them only when /metrics is scraped.
    """

    def __init__(self) -> None:
        self.messages_in: defaultdict[str, int] = defaultdict(int)
        self.messages_out: defaultdict[str, int] = defaultdict(int)
        self.bytes_in = 0
        self.bytes_out = 0
        self.encodes = 0

    def collect(self) -> Iterator[Metric]:
        for name, documentation, by_type in (
            ("warpsocket_messages_in", "Envelopes received, by type", self.messages_in),
            (
                "warpsocket_messages_out",
                "Envelope deliveries sent, by type (a broadcast counts once per recipient)",
                self.messages_out,
            ),
        ):
            family = CounterMetricFamily(name, documentation, labels=["type"])
            for kind, count in sorted(by_type.items()):
                family.add_metric([kind], count)
            yield family
        yield CounterMetricFamily(
            "warpsocket_bytes_in", "Payload bytes received", value=self.bytes_in
        )
        yield CounterMetricFamily(
            "warpsocket_bytes_out", "Payload bytes sent", value=self.bytes_out
        )
        yield CounterMetricFamily(
            "warpsocket_encodes",
            "Envelopes encoded (a broadcast is encoded once per codec in use)",
            value=self.encodes,
        )


class DeliveryLatency:
    """``warpsocket_delivery_latency_seconds{stream}``: from the moment the
    publishing node accepted a message (its ``timestamp``) to the moment this
    node wrote it to its recipients' connections, once per message and node.

    Observed once per live delivery, so kept as plain integers like
    ``Traffic`` (a prometheus_client histogram takes a lock per observation).
    """

    def __init__(self) -> None:
        self.counts = {kind: [0] * (len(DELIVERY_BUCKETS) + 1) for kind in STREAM_KINDS}
        self.sums = dict.fromkeys(STREAM_KINDS, 0.0)

    def observe(self, kind: str, seconds: float) -> None:
        counts = self.counts.get(kind)
        if counts is None:
            return
        # Another node's clock may be a little ahead: never below zero.
        seconds = max(0.0, seconds)
        counts[bisect_left(DELIVERY_BUCKETS, seconds)] += 1
        self.sums[kind] += seconds

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "warpsocket_delivery_latency_seconds",
            "From a message's acceptance by the publishing node to its write to this "
            "node's recipients, by stream kind (live deliveries; once per message)",
            labels=["stream"],
        )
        for kind in STREAM_KINDS:
            running = 0
            buckets: list[tuple[str, float]] = []
            bounds = [repr(bound) for bound in DELIVERY_BUCKETS] + ["+Inf"]
            for bound, count in zip(bounds, self.counts[kind], strict=True):
                running += count
                buckets.append((bound, running))
            family.add_metric([kind], buckets, sum_value=self.sums[kind])
        yield family


# prometheus_client's default histogram bounds (seconds), as ``Histogram`` uses them.
HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class HandlerSeries:
    """One event name's series of ``HandlerLatency``."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(HANDLER_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(HANDLER_BUCKETS, seconds)] += 1
        self.sum += seconds


class HandlerLatency:
    """``warpsocket_handler_seconds{event}``: observed once per handled message,
    so kept as plain integers like ``Traffic`` (a prometheus_client histogram
    takes a lock and loops over its buckets in Python per observation). The
    buckets are prometheus_client's defaults; ``labels(name)`` returns the
    series to ``observe``, as a ``Histogram`` child would."""

    # The label names, where prometheus_client's own metrics keep them.
    _labelnames = ("event",)

    def __init__(self) -> None:
        self._series: dict[str, HandlerSeries] = {}

    def labels(self, event: str) -> HandlerSeries:
        series = self._series.get(event)
        if series is None:
            series = self._series[event] = HandlerSeries()
        return series

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(
            "warpsocket_handler_seconds", "Time spent in application handlers", labels=["event"]
        )

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        bounds = [repr(bound) for bound in HANDLER_BUCKETS] + ["+Inf"]
        for event, series in sorted(self._series.items()):
            running = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(bounds, series.counts, strict=True):
                running += count
                buckets.append((bound, running))
            family.add_metric([event], buckets, sum_value=series.sum)
        yield family


class CoreCounts:
    """Tallies the sans-I/O core keeps as integers, read when scraped."""

    def __init__(self) -> None:
        # The hub's ServerCore (``retries_sent``, ``duplicates_seen``), once set.
        self.core: Any = None

    def collect(self) -> Iterator[Metric]:
        core = self.core
        yield CounterMetricFamily(
            "warpsocket_retries",
            "Unacknowledged direct messages re-sent",
            value=0 if core is None else core.retries_sent,
        )
        yield CounterMetricFamily(
            "warpsocket_duplicates",
            "Client messages recognised as retries by the dedup window (answered, not handled)",
            value=0 if core is None else core.duplicates_seen,
        )


class HubMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connections = Gauge("warpsocket_connections", "Open WebSocket connections", registry=r)
        self.sessions = Gauge("warpsocket_sessions", "Sessions, attached or not", registry=r)
        self.rooms = Gauge("warpsocket_rooms", "Rooms with at least one session", registry=r)
        self.traffic = Traffic()
        r.register(self.traffic)
        self.delivery = DeliveryLatency()
        r.register(self.delivery)
        self.protocol_errors = Counter(
            "warpsocket_protocol_errors",
            "Invalid frames or envelopes, by code",
            ["code"],
            registry=r,
        )
        self.acks_pending = Gauge(
            "warpsocket_acks_pending", "Acknowledged direct sends awaiting the client", registry=r
        )
        self.core_counts = CoreCounts()
        r.register(self.core_counts)
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
        self.handler_latency = HandlerLatency()
        r.register(self.handler_latency)
        # Security and limits (docs/security.md).
        self.refused_connections = Counter(
            "warpsocket_refused_connections",
            "TCP connections refused before HTTP was parsed, by reason",
            ["reason"],
            registry=r,
        )
        self.upgrade_timeouts = Counter(
            "warpsocket_upgrade_timeouts",
            "Connections aborted for not completing the WebSocket upgrade in time",
            registry=r,
        )
        self.auth = Counter(
            "warpsocket_auth",
            "Token verifications, by outcome (ok or the reason for refusal)",
            ["outcome"],
            registry=r,
        )
        self.token_refreshes = Counter(
            "warpsocket_token_refreshes", "Tokens refreshed in band (auth envelope)", registry=r
        )
        self.rate_limited = Counter(
            "warpsocket_rate_limited",
            "Messages or connections refused by a rate limit, by scope",
            ["scope"],
            registry=r,
        )
        self.slow_consumers = Counter(
            "warpsocket_slow_consumers",
            "Connections closed because their outbound buffer stayed over its bound",
            registry=r,
        )
        # The data model keeps this at zero for the built-in codecs (protocol.md 2.1).
        self.encode_failures = Counter(
            "warpsocket_encode_failures",
            "Envelopes a connection's codec could not encode (each replaced or dropped)",
            registry=r,
        )
        # Slow-message alerts (docs/observability.md): crossings by kind.
        self.slow = Counter(
            "warpsocket_slow",
            "Slow-message threshold crossings, by kind (handler, delivery, ack, buffer)",
            ["kind"],
            registry=r,
        )
        self.history_bytes = Gauge(
            "warpsocket_history_bytes",
            "Bytes held by this node's in-memory stream histories (bounded by history limits)",
            registry=r,
        )
