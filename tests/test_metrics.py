"""Metrics: the delivery latency histogram, and a page that documents every metric."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from tests.wsclient import ServerTestCase, async_test, http_get
from warpsocket.core.server import CoreOptions
from warpsocket.protocol.envelope import Envelope
from warpsocket.server.hub import Hub
from warpsocket.server.metrics import DELIVERY_BUCKETS, DeliveryLatency

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


class DeliveryLatencyTests(unittest.TestCase):
    def test_buckets_are_cumulative_with_sum_and_count(self) -> None:
        latency = DeliveryLatency()
        for seconds in (0.0004, 0.001, 0.003, 0.2, 30.0, -0.5):
            latency.observe("room", seconds)
        latency.observe("direct", 0.01)
        latency.observe("unknown", 1.0)  # not a stream kind: ignored
        [family] = list(latency.collect())
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}

        def bucket(kind: str, bound: str) -> float:
            return samples[
                ("warpsocket_delivery_latency_seconds_bucket", (("le", bound), ("stream", kind)))
            ]

        # -0.5 (another node's clock ahead) counts as 0; 0.001 is "le 0.001".
        self.assertEqual(bucket("room", "0.001"), 3)
        self.assertEqual(bucket("room", "0.005"), 4)
        self.assertEqual(bucket("room", "0.25"), 5)
        self.assertEqual(bucket("room", "10.0"), 5)
        self.assertEqual(bucket("room", "+Inf"), 6)
        self.assertEqual(bucket("direct", "0.01"), 1)
        self.assertEqual(bucket("broadcast", "+Inf"), 0)
        count = samples[("warpsocket_delivery_latency_seconds_count", (("stream", "room"),))]
        total = samples[("warpsocket_delivery_latency_seconds_sum", (("stream", "room"),))]
        self.assertEqual(count, 6)
        self.assertAlmostEqual(total, 0.0004 + 0.001 + 0.003 + 0.2 + 30.0)
        self.assertEqual(len(DELIVERY_BUCKETS) + 1, len(latency.counts["room"]))


class DeliveryLatencyEndToEndTests(ServerTestCase):
    @async_test
    async def test_live_deliveries_are_observed_once_per_message(self) -> None:
        hub = self.start_server(open_rooms=True)
        first = await self.connect(rooms=["r"])
        second = await self.connect(rooms=["r"])
        await hub.publish("r", "x", 1)
        assert first.session is not None
        await hub.send(first.session, "y", 2)
        for client in (first, second):
            await client.wait_for(lambda m: m.get("event") == "x")
        name = "warpsocket_delivery_latency_seconds"
        # One message to two recipients: one observation, at once (the fake clock stood still).
        self.assertEqual(self.metric(f"{name}_count", {"stream": "room"}), 1.0)
        self.assertEqual(self.metric(f"{name}_bucket", {"stream": "room", "le": "0.001"}), 1.0)
        self.assertEqual(self.metric(f"{name}_count", {"stream": "direct"}), 1.0)
        # A message accepted 0.3 s before this node writes it (a slow cluster hop).
        stored = hub.store.append("room:r", _template(hub), hub.now_ms())
        self.clock.advance(0.3)
        hub._outbox.delivered("room:r", stored)
        self.assertEqual(self.metric(f"{name}_bucket", {"stream": "room", "le": "0.25"}), 1.0)
        self.assertEqual(self.metric(f"{name}_bucket", {"stream": "room", "le": "0.5"}), 2.0)
        # With nobody to deliver to, nothing is observed.
        await hub.publish("empty", "z", 3)
        self.assertEqual(self.metric(f"{name}_count", {"stream": "room"}), 2.0)


def _template(hub: Hub) -> Envelope:
    return hub._outbox.outbound("late", None, None)


class CoreCountTests(ServerTestCase):
    @async_test
    async def test_retries_and_duplicates_move(self) -> None:
        hub = self.start_server(CoreOptions(ack_retry_ms=10_000))
        hub.on("work", lambda ctx, data: None)
        client = await self.connect()
        assert client.session is not None
        acked = hub.send(client.session, "job", 1, ack=True)
        await client.wait_for(lambda m: m.get("event") == "job")
        self.assertEqual(self.metric("warpsocket_retries_total"), 0.0)
        self.advance(10)
        again = await client.wait_for(lambda m: m.get("event") == "job")  # the re-send
        self.assertEqual(self.metric("warpsocket_retries_total"), 1.0)
        client.ack(again["id"])
        await acked
        message = {"type": "event", "id": "m1", "event": "work", "ack": True}
        for _ in range(2):
            await client.request(dict(message))
        self.assertEqual(self.metric("warpsocket_duplicates_total"), 1.0)


class MetricsPageTests(ServerTestCase):
    @async_test
    async def test_every_exposed_metric_and_label_is_documented(self) -> None:
        hub = self.start_server(open_rooms=True)
        client = await self.connect(rooms=["r"])
        await hub.publish("r", "x", 1)
        await client.wait_for(lambda m: m.get("event") == "x")
        await client.close()
        code, body, _ = await http_get(self.port, "/metrics")
        self.assertEqual(code, 200)
        documented = _documented()
        exposed = {}
        for family in hub.metrics.registry.collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            exposed[name] = _labels_of(hub, family.name)
        missing = sorted(set(exposed) - set(documented))
        self.assertEqual(missing, [], f"not in {DOCS.name}")
        for name, labels in exposed.items():
            self.assertEqual(labels, documented[name], name)
        # And the page itself parses as what Prometheus scrapes.
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        self.assertIn("warpsocket_delivery_latency_seconds", names)


def _labels_of(hub: Hub, family: str) -> set[str]:
    """Label names of a family, from its declaration (no sample needs to exist)."""
    for collector in list(hub.metrics.registry._collector_to_names):
        names = getattr(collector, "_labelnames", None)
        if names is not None and family in hub.metrics.registry._collector_to_names[collector]:
            return set(names)
    for collected in hub.metrics.registry.collect():
        if collected.name == family:
            return {k for s in collected.samples for k in s.labels if k not in ("le", "quantile")}
    return set()


def _documented() -> dict[str, set[str]]:
    """``| `name` | type | `label`, `label` | meaning |`` rows of docs/metrics.md."""
    rows: dict[str, set[str]] = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        found = re.match(r"\|\s*`(warpsocket_[a-z_]+)`\s*\|[^|]*\|([^|]*)\|", line)
        if found:
            rows[found.group(1)] = set(re.findall(r"`([a-z_]+)`", found.group(2)))
    return rows
