"""``BlockingClient`` offers what ``WarpSocketClient`` offers, blocking; real sockets."""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread

from tests.helpers.client import FAST, ClientTestCase, ServerFixture, make_hub, pause, reactor
from warpsocket.client.blocking import BlockingClient
from warpsocket.client.client import ClientClosedError, ConnectTimeoutError
from warpsocket.client.options import ClientOptions
from warpsocket.client.state import ClientState
from warpsocket.core.client import Status


class BlockingParityTests(ClientTestCase):
    @inlineCallbacks
    def test_everyMethodFromAPlainThread(self) -> Any:
        hub = make_hub()
        hub.on("add", lambda ctx, data: data[0] + data[1])
        server = ServerFixture(self, hub)
        reactor_thread = threading.get_ident()

        def script() -> dict[str, Any]:
            seen: dict[str, Any] = {"states": [], "opened": [], "threads": set()}
            client = BlockingClient(server.url, ClientOptions(backoff=FAST))

            def on_state(old: ClientState, new: ClientState) -> None:
                seen["states"].append(new.value)
                seen["threads"].add(threading.get_ident())

            client.on_state(on_state)
            client.on_open(lambda opened: seen["opened"].append(opened.resumed))
            client.on_lost(lambda stream, why: None)
            client.subscribe("lobby")
            client.connect(timeout=5)
            seen["session"] = client.session is not None
            seen["rooms"] = client.rooms
            seen["sum"] = client.call("add", [1, 2])
            client.ping()
            client.refresh_token()  # no provider: nothing to do
            first = client.session
            client.reconnect()
            while client.stats.connections < 2:
                threading.Event().wait(0.01)
            seen["resumed_same"] = client.session == first
            seen["queue"] = client.queue_length
            seen["outcome"] = client.send("add", [1, 1], ack=True)
            stats = client.stats
            seen["stats"] = (stats.connections, stats.reconnects, stats.rtt_seconds is not None)
            client.close()
            try:
                client.send("add", [1, 1], ack=True)
            except ClientClosedError:
                seen["after_close"] = "refused"
            return seen

        seen = yield deferToThread(script)
        self.assertEqual(
            seen["states"],
            ["connecting", "open", "disconnected", "reconnecting", "connecting", "open", "closed"],
        )
        self.assertEqual(seen["threads"], {reactor_thread})  # handlers: the reactor thread
        self.assertEqual(seen["opened"], [False, True])
        self.assertEqual((seen["session"], seen["rooms"], seen["sum"]), (True, {"lobby"}, 3))
        self.assertEqual((seen["resumed_same"], seen["queue"]), (True, 0))
        self.assertEqual(seen["outcome"].status, Status.ACKED)
        self.assertEqual(seen["stats"], (2, 1, True))
        self.assertEqual(seen["after_close"], "refused")

    @inlineCallbacks
    def test_connectTimeoutWithTheServerDown(self) -> Any:
        server = ServerFixture(self, make_hub())
        url = server.url
        yield server.stop()

        def script() -> str:
            client = BlockingClient(url, ClientOptions(backoff=FAST))
            try:
                client.connect(timeout=0.3)
            except ConnectTimeoutError:
                result = "timed out in " + client.state.value
            client.close()
            return result

        result = yield deferToThread(script)
        self.assertIn(result, ["timed out in reconnecting", "timed out in connecting"])

    @inlineCallbacks
    def test_refusedOnTheReactorThread(self) -> Any:
        """A blocking call from a handler would wait for itself: an error instead."""
        yield pause(0)  # from here on this runs on the reactor thread, as a handler would
        self.assertTrue(reactor.running)
        self.assertRaises(RuntimeError, BlockingClient, "ws://127.0.0.1:9/ws")
