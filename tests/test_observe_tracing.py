"""OpenTelemetry over real sockets: one trace from a client's send, through
the server's handler and publish, to the receiving client's delivery; on one
node and across two nodes of a Redis cluster (docs/observability.md)."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from twisted.internet.defer import Deferred, ensureDeferred, inlineCallbacks
from twisted.trial import unittest

from tests.helpers.client import ClientTestCase, ServerFixture, make_hub, wait_until
from tests.helpers.cluster import ClusterCase, reactor
from tests.wsclient import WsClient
from tests.wsclient import wait_until as ws_wait_until
from warpsocket.backends.redis import RedisBackend, RedisOptions
from warpsocket.client.client import Message, WarpSocketClient
from warpsocket.client.options import ClientOptions
from warpsocket.core.history import HistoryLimits
from warpsocket.core.server import CoreOptions
from warpsocket.protocol.tracecontext import TraceContext
from warpsocket.server.context import Context
from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.service import WarpSocketService


def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


def traced_hub(tracer_provider: TracerProvider) -> Hub:
    return Hub(HubOptions(open_rooms=True), tracer_provider=tracer_provider)


def by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


class OneNodeTests(ClientTestCase):
    @inlineCallbacks
    def test_send_handler_publish_delivery_share_one_trace(self) -> Any:
        server_provider, server_spans = provider()
        client_provider, client_spans = provider()
        hub = traced_hub(server_provider)
        handled: list[str] = []

        @hub.on("say")
        def say(ctx: Context, data: Any) -> Any:
            handled.append(data)
            return ctx.hub.publish("chat", "said", data)

        server = ServerFixture(self, hub)
        sender = self.client(server.url, tracer_provider=client_provider)
        receiver = self.client(server.url, tracer_provider=client_provider)
        got: list[Message] = []
        receiver.on("said", got.append)
        receiver.subscribe("chat")

        async def run() -> None:
            await sender.connect()
            await receiver.connect()
            await wait_until(lambda: bool(hub.room_members("chat")))
            await sender.send("say", "hi", ack=True)
            await wait_until(lambda: bool(got))

        yield ensureDeferred(run())
        self.assertEqual(handled, ["hi"])
        (message,) = got
        self.assertIsInstance(message.trace, TraceContext)
        client_finished = client_spans.get_finished_spans()
        server_finished = server_spans.get_finished_spans()
        (send,) = by_name(client_finished, "warpsocket.send say")
        (delivery,) = by_name(client_finished, "warpsocket.deliver said")
        trace_id = send.context.trace_id
        self.assertEqual(delivery.context.trace_id, trace_id)
        self.assertEqual([link.context.trace_id for link in delivery.links], [trace_id])
        names = {s.name for s in server_finished if s.context.trace_id == trace_id}
        for expected in (
            "warpsocket.receive event",
            "warpsocket.decode",
            "warpsocket.handler say",
            "warpsocket.ack",
            "warpsocket.publish room",
            "warpsocket.append",
            "warpsocket.deliver room",
        ):
            self.assertIn(expected, names)
        (receive,) = by_name(server_finished, "warpsocket.receive event")
        # The server's span continues the client's: its parent is the send span.
        self.assertEqual(receive.parent.span_id, send.context.span_id)
        (handler,) = by_name(server_finished, "warpsocket.handler say")
        self.assertEqual(handler.parent.span_id, receive.context.span_id)
        (publish,) = by_name(server_finished, "warpsocket.publish room")
        self.assertEqual(publish.parent.span_id, handler.context.span_id)
        self.assertEqual(delivery.parent.span_id, publish.context.span_id)

    @inlineCallbacks
    def test_room_event_from_a_client_carries_the_trace(self) -> Any:
        server_provider, server_spans = provider()
        client_provider, client_spans = provider()
        hub = traced_hub(server_provider)
        server = ServerFixture(self, hub)
        sender = self.client(server.url, tracer_provider=client_provider)
        receiver = self.client(server.url, tracer_provider=client_provider)
        got: list[Message] = []
        receiver.on("note", got.append)
        receiver.subscribe("chat")

        async def run() -> None:
            await sender.connect()
            await receiver.connect()
            await wait_until(lambda: bool(hub.room_members("chat")))
            await sender.send("note", {"token": "x"}, room="chat", ack=True)
            await wait_until(lambda: bool(got))

        yield ensureDeferred(run())
        (send,) = by_name(client_spans.get_finished_spans(), "warpsocket.send note")
        (delivery,) = by_name(client_spans.get_finished_spans(), "warpsocket.deliver note")
        self.assertEqual(delivery.context.trace_id, send.context.trace_id)
        (publish,) = by_name(server_spans.get_finished_spans(), "warpsocket.publish room")
        self.assertEqual(publish.context.trace_id, send.context.trace_id)

    @inlineCallbacks
    def test_without_server_tracing_the_trace_passes_through(self) -> Any:
        client_provider, client_spans = provider()
        hub = make_hub()
        self.assertIsNone(hub.observe)
        server = ServerFixture(self, hub)
        sender = self.client(server.url, tracer_provider=client_provider)
        receiver = self.client(server.url, tracer_provider=client_provider)
        got: list[Message] = []
        receiver.on("note", got.append)
        receiver.subscribe("chat")

        async def run() -> None:
            await sender.connect()
            await receiver.connect()
            await wait_until(lambda: bool(hub.room_members("chat")))
            await sender.send("note", 1, room="chat", ack=True)
            await wait_until(lambda: bool(got))

        yield ensureDeferred(run())
        (send,) = by_name(client_spans.get_finished_spans(), "warpsocket.send note")
        (message,) = got
        assert message.trace is not None
        self.assertEqual(message.trace.parent_id, f"{send.context.span_id:016x}")
        (delivery,) = by_name(client_spans.get_finished_spans(), "warpsocket.deliver note")
        self.assertEqual(delivery.parent.span_id, send.context.span_id)


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class ClusterTraceTests(ClusterCase):
    """Two nodes on a real redis-server: the stream event crosses Redis with
    its ``trace``, and both nodes' delivery spans join the sender's trace."""

    def traced_node(self, name: str, tracer_provider: TracerProvider) -> Any:
        backend = RedisBackend(RedisOptions(url=self.url, prefix="t:"), HistoryLimits(), node=name)
        hub = Hub(
            HubOptions(core=CoreOptions(node=name), open_rooms=True, shutdown_timeout=1.0),
            clock=reactor,
            backend=backend,
            tracer_provider=tracer_provider,
        )
        service = WarpSocketService(hub, ["tcp:0:interface=127.0.0.1"])
        service.startService()
        self.addCleanup(service.stopService)
        return hub, service.ports[0].getHost().port

    def test_trace_crosses_nodes(self) -> Deferred[None]:
        self.start_redis()
        spans_a_provider, spans_a = provider()
        spans_b_provider, spans_b = provider()
        hub_a, port_a = self.traced_node("a", spans_a_provider)
        hub_b, port_b = self.traced_node("b", spans_b_provider)

        async def run() -> None:
            await wait_until_healthy(hub_a, hub_b)
            listener = await self.raw_client(port_b, rooms=["chat"])
            sender = await self.raw_client(port_a, rooms=["chat"])
            await ws_wait_until(lambda: bool(hub_b.room_members("chat")), 10, "joined")
            sender.send(
                {
                    "type": "event",
                    "id": "m-1",
                    "timestamp": 1,
                    "event": "note",
                    "room": "chat",
                    "ack": True,
                    "data": 1,
                    "trace": {"traceparent": TRACEPARENT, "tracestate": "k=v"},
                }
            )
            await ws_wait_until(lambda: bool(_events(listener, "note")), 10, "delivered on b")
            (event,) = _events(listener, "note")
            trace = event["trace"]
            self.assertEqual(trace["traceparent"][3:35], TRACEPARENT[3:35])
            self.assertEqual(trace["tracestate"], "k=v")

        return ensureDeferred(run()).addCallback(lambda _: self._check(spans_a, spans_b))

    def test_client_send_to_handler_to_delivery_on_another_node(self) -> Deferred[None]:
        """Python clients on both ends: the sender on node a, whose handler
        publishes; the receiver on node b. One trace id from the send span to
        the receiver's delivery span, through both nodes' spans."""
        self.start_redis()
        spans_a_provider, spans_a = provider()
        spans_b_provider, spans_b = provider()
        clients_provider, client_spans = provider()
        hub_a, port_a = self.traced_node("a", spans_a_provider)
        hub_b, port_b = self.traced_node("b", spans_b_provider)
        hub_a.on("say", lambda ctx, data: ctx.hub.publish("chat", "said", data))
        sender = WarpSocketClient(
            f"ws://127.0.0.1:{port_a}/ws", ClientOptions(tracer_provider=clients_provider)
        )
        receiver = WarpSocketClient(
            f"ws://127.0.0.1:{port_b}/ws", ClientOptions(tracer_provider=clients_provider)
        )
        self.addCleanup(sender.close)
        self.addCleanup(receiver.close)
        got: list[Message] = []
        receiver.on("said", got.append)
        receiver.subscribe("chat")

        async def run() -> None:
            await wait_until_healthy(hub_a, hub_b)
            await sender.connect()
            await receiver.connect()
            await ws_wait_until(lambda: bool(hub_b.room_members("chat")), 10, "joined")
            await sender.send("say", "hi", ack=True)
            await ws_wait_until(lambda: bool(got), 10, "delivered on b")

        def check(_: object) -> None:
            finished = client_spans.get_finished_spans()
            (send,) = by_name(finished, "warpsocket.send say")
            (delivery,) = by_name(finished, "warpsocket.deliver said")
            trace_id = send.context.trace_id
            self.assertEqual(delivery.context.trace_id, trace_id)
            on_a = {s.name for s in spans_a.get_finished_spans() if s.context.trace_id == trace_id}
            on_b = {s.name for s in spans_b.get_finished_spans() if s.context.trace_id == trace_id}
            self.assertIn("warpsocket.handler say", on_a)
            self.assertIn("warpsocket.publish room", on_a)
            self.assertIn("warpsocket.deliver room", on_b)
            (deliver_b,) = by_name(spans_b.get_finished_spans(), "warpsocket.deliver room")
            self.assertEqual(delivery.parent.span_id, deliver_b.parent.span_id)  # a's publish

        return ensureDeferred(run()).addCallback(check)

    def _check(self, spans_a: InMemorySpanExporter, spans_b: InMemorySpanExporter) -> None:
        trace_id = int(TRACEPARENT[3:35], 16)
        on_a = {s.name for s in spans_a.get_finished_spans() if s.context.trace_id == trace_id}
        on_b = {s.name for s in spans_b.get_finished_spans() if s.context.trace_id == trace_id}
        self.assertIn("warpsocket.receive event", on_a)
        self.assertIn("warpsocket.publish room", on_a)
        self.assertIn("warpsocket.deliver room", on_b)
        (publish,) = by_name(spans_a.get_finished_spans(), "warpsocket.publish room")
        (deliver_b,) = by_name(spans_b.get_finished_spans(), "warpsocket.deliver room")
        self.assertEqual(deliver_b.parent.span_id, publish.context.span_id)

    def test_frames_held_behind_a_claim_keep_their_own_traces(self) -> Deferred[None]:
        """An acked event waits for its dedup claim (Redis paused); an event
        sent after it is held meanwhile. Each handler span is in its own
        sender's trace, not the one of the frame it waited behind."""
        redis = self.start_redis()
        spans_provider, spans = provider()
        hub, port = self.traced_node("a", spans_provider)
        hub.on("n", lambda ctx, data: None)
        second_parent = "00-1bf7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"

        async def run() -> None:
            await wait_until_healthy(hub)
            client = await self.raw_client(port)
            redis.command("CLIENT", "PAUSE", "300", "WRITE")  # the claim waits
            first = {"type": "event", "id": "m-1", "timestamp": 1, "event": "n", "ack": True}
            client.send({**first, "trace": {"traceparent": TRACEPARENT}})
            client.send(
                {
                    "type": "event",
                    "id": "m-2",
                    "timestamp": 1,
                    "event": "n",
                    "trace": {"traceparent": second_parent},
                }
            )
            await client.reply_to("m-1")
            await ws_wait_until(
                lambda: len(by_name(spans.get_finished_spans(), "warpsocket.handler n")) == 2,
                10,
                "both handled",
            )

        def check(_: object) -> None:
            handled = by_name(spans.get_finished_spans(), "warpsocket.handler n")
            traces = sorted(span.context.trace_id for span in handled)
            expected = sorted(int(parent[3:35], 16) for parent in (TRACEPARENT, second_parent))
            self.assertEqual(traces, expected)

        return ensureDeferred(run()).addCallback(check)

    async def raw_client(self, port: int, **hello: Any) -> WsClient:
        from tests.wsclient import connect

        client = await connect(port)
        self.addCleanup(self._close, client)
        welcome = await client.hello(**hello)
        self.assertEqual(welcome["type"], "welcome", welcome)
        return client


def _events(client: WsClient, name: str) -> list[dict[str, Any]]:
    return [m for m in client.messages if m.get("type") == "event" and m.get("event") == name]


async def wait_until_healthy(*hubs: Hub) -> None:
    await ws_wait_until(lambda: all(h.health is None for h in hubs), 15, "healthy")


__all__ = ["unittest"]
