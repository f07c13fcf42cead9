"""Record mode over real sockets: a client talks to a real server through the
recording proxy; the scenario written, played by the mock server, gives the
next client the same events on the same streams in the same order (and the
same RPC answers)."""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial import unittest

from tests.helpers.client import FAST
from tests.wsclient import HandshakeRefusedError, async_test, connect, sleep, wait_until
from warpsocket.client.client import DeliveryError, Message, WarpSocketClient
from warpsocket.client.options import ClientOptions
from warpsocket.mock import MockService, load_scenario
from warpsocket.mock.record import Recorder, RecordingProxyFactory
from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.context import Context
from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.middleware import Reject
from warpsocket.server.service import WarpSocketService


def upstream_app(hub: Hub) -> None:
    """A real app: a few events on each stream, at set times after a new session opens."""

    def opened(ctx: Context, resumed: bool) -> None:
        if resumed:
            return
        session = ctx.session
        script: list[tuple[float, Any]] = [
            (0.05, lambda: hub.send(session, "hello", {"you": "there"})),
            (0.10, lambda: hub.publish("news", "headline", {"n": 1, "text": "first"})),
            (0.15, lambda: hub.broadcast("notice", "to everyone")),
            (0.20, lambda: hub.publish("news", "headline", {"n": 2, "text": "second"})),
            (0.25, lambda: hub.send(session, "bye", [1, 2, 3])),
        ]
        for delay, step in script:
            reactor.callLater(delay, step)

    hub.on_open(opened)
    hub.on("add", lambda ctx, data: data["a"] + data["b"])

    def refuse(ctx: Context, data: Any) -> None:
        raise Reject(ErrorCode.FORBIDDEN, "not you")

    hub.on("secret", refuse)


class RecordReplayTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.clients: list[WarpSocketClient] = []
        self.services: list[Any] = []

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        for service in reversed(self.services):
            await service.stopService()

    def tearDown(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.stop())

    def client(self, url: str, seen: list[tuple[str, str, Any]]) -> WarpSocketClient:
        client = WarpSocketClient(url, ClientOptions(backoff=FAST, watch_network=False))

        def heard(message: Message) -> None:
            seen.append((message.stream, message.event, message.data))

        client.on("*", heard)
        client.subscribe("news")
        self.clients.append(client)
        return client

    async def session(self, url: str) -> tuple[list[tuple[str, str, Any]], Any, Any]:
        seen: list[tuple[str, str, Any]] = []
        client = self.client(url, seen)
        await client.connect(timeout=10)
        await wait_until(lambda: len(seen) >= 5, what=f"5 events (have {seen})")
        added = await client.call("add", {"a": 2, "b": 3})
        try:
            await client.call("secret")
            refused: Any = None
        except DeliveryError as error:
            refused = (error.outcome.code, error.outcome.message)
        await sleep(0.1)  # nothing more arrives
        return seen, added, refused

    @async_test
    async def test_record_then_replay_gives_the_same_events(self) -> None:
        hub = Hub(HubOptions(open_rooms=True))
        upstream_app(hub)
        server = WarpSocketService(hub, ["tcp:0:interface=127.0.0.1"])
        server.startService()
        self.services.append(server)
        upstream = f"ws://127.0.0.1:{server.ports[0].getHost().port}/ws"

        out = self.mktemp() + ".json"
        recorder = Recorder(out, reactor)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            RecordingProxyFactory(upstream, recorder)
        )
        self.addCleanup(port.stopListening)
        proxied = f"ws://127.0.0.1:{port.getHost().port}/ws"
        recorded, added, refused = await self.session(proxied)
        self.assertEqual(
            [(stream, event) for stream, event, _ in recorded],
            [
                ("direct", "hello"),
                ("room:news", "headline"),
                ("broadcast", "notice"),
                ("room:news", "headline"),
                ("direct", "bye"),
            ],
        )
        self.assertEqual((added, refused), (5, (4102, "not you")))
        recorder.write()
        with open(out) as handle:
            written = json.load(handle)
        times = [float(rule["at"][:-1]) for rule in written["events"]]
        self.assertEqual(times, sorted(times))
        self.assertGreaterEqual(times[-1] - times[0], 0.15)

        scenario = load_scenario(out)
        mock = MockService(scenario, ["tcp:0:interface=127.0.0.1"])
        mock.startService()
        self.services.append(mock)
        replayed, added_again, refused_again = await self.session(
            f"ws://127.0.0.1:{mock.ports[0].getHost().port}/ws"
        )
        self.assertEqual(replayed, recorded)
        self.assertEqual((added_again, refused_again), (added, refused))

    @async_test
    async def test_an_unreachable_upstream_is_a_502(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]  # nothing listens there once closed
        recorder = Recorder(self.mktemp(), reactor)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            RecordingProxyFactory(f"ws://127.0.0.1:{closed}/ws", recorder)
        )
        self.addCleanup(port.stopListening)
        with self.assertRaises(HandshakeRefusedError) as refused:
            await connect(port.getHost().port)
        self.assertEqual(refused.exception.status, 502)
