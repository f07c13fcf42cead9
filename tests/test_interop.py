"""A third-party client (the `websockets` library) against the server, ws:// and wss://.

The client runs in a subprocess with its own asyncio loop and knows nothing of
WarpSocket but docs/protocol.md: it is the stranger the spec is written for.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.service import WarpSocketService

reactor: Any = _reactor
CERTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "certs")

SCRIPT = r"""
import asyncio, json, ssl, sys
import websockets

async def main(url, cafile, subprotocol):
    context = ssl.create_default_context(cafile=cafile) if url.startswith("wss") else None
    async with websockets.connect(url, subprotocols=[subprotocol], ssl=context) as ws:
        out = {"subprotocol": ws.subprotocol}
        await ws.send(json.dumps({"type": "hello", "id": "h1", "timestamp": 1,
                                  "data": {"rooms": ["chat"]}}))
        welcome = json.loads(await ws.recv())
        out["welcome"] = {"type": welcome["type"], "ref": welcome["ref"],
                          "streams": sorted(welcome["data"]["streams"])}
        await ws.send(json.dumps({"type": "call", "id": "c1", "timestamp": 2,
                                  "event": "add", "data": [2, 3]}))
        out["result"] = json.loads(await ws.recv())
        await ws.send("not json")
        out["bad"] = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "event", "id": "m1", "timestamp": 3,
                                  "event": "say", "room": "chat", "data": "hi", "ack": True}))
        replies = [json.loads(await ws.recv()), json.loads(await ws.recv())]
        out["published"] = sorted((r["type"], r.get("stream"), r.get("ref")) for r in replies)
    print(json.dumps(out))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"""


class ThirdPartyClientTests(unittest.TestCase):
    def serve(self, endpoint: str) -> int:
        hub = Hub(HubOptions(open_rooms=True))
        hub.on("add", lambda ctx, data: data[0] + data[1])
        service = WarpSocketService(hub, [endpoint])
        service.startService()
        self.addCleanup(service.stopService)
        port: int = service.ports[0].getHost().port
        return port

    @inlineCallbacks
    def run_client(self, url: str) -> Any:
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-c", SCRIPT, url, os.path.join(CERTS, "ca.pem"), "warpsocket.v1.json"],
            env=dict(os.environ),
            reactor=reactor,
        )
        self.assertEqual(code, 0, err.decode()[-2000:])
        return json.loads(out)

    def check(self, result: dict[str, Any]) -> None:
        self.assertEqual(result["subprotocol"], "warpsocket.v1.json")
        self.assertEqual(
            result["welcome"],
            {"type": "welcome", "ref": "h1", "streams": ["broadcast", "direct", "room:chat"]},
        )
        self.assertEqual(
            (result["result"]["type"], result["result"]["ref"], result["result"]["data"]),
            ("result", "c1", 5),
        )
        self.assertEqual((result["bad"]["type"], result["bad"]["code"]), ("error", 4000))
        self.assertEqual(result["published"], [["ack", None, "m1"], ["event", "room:chat", None]])

    @inlineCallbacks
    def test_plainWebSocket(self) -> Any:
        port = self.serve("tcp:0:interface=127.0.0.1")
        self.check((yield self.run_client(f"ws://127.0.0.1:{port}/ws")))

    @inlineCallbacks
    def test_tlsVerifiedAgainstTheDevelopmentCA(self) -> Any:
        key, cert = os.path.join(CERTS, "server.key"), os.path.join(CERTS, "server.pem")
        port = self.serve(f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
        self.check((yield self.run_client(f"wss://localhost:{port}/ws")))
