"""``AsyncClient`` on asyncio, against a real server on 127.0.0.1.

The asyncio reactor cannot share this trial process with the default
reactor, so the client runs in a child process (``asyncio.run``) and prints
what it saw; the server runs here.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue

from tests.helpers.client import ClientTestCase, ServerFixture, make_hub
from warpsocket.server.context import Context

SCRIPT = """
import asyncio, json, sys

from warpsocket.client.aio import AsyncClient
from warpsocket.client.client import ClientClosedError
from warpsocket.client.options import ClientOptions


async def main(url):
    loop = asyncio.get_running_loop()
    echoed = loop.create_future()
    states = []
    async with AsyncClient(url, ClientOptions(watch_network=False)) as client:

        async def on_echo(message):
            await asyncio.sleep(0.01)  # asyncio awaits inside a handler
            echoed.set_result(message.data)

        client.on("echo", on_echo)
        client.on_state(lambda old, new: states.append(new.value))
        total = await client.call("add", [2, 3])
        outcome = await client.send("note", "hi", ack=True)
        fire = await client.send("note", "fire-and-forget")
        data = await asyncio.wait_for(echoed, 5)
        session = client.session
    try:
        await client.send("note", "late", ack=True)
        late = "sent"
    except ClientClosedError:
        late = "refused"
    print(json.dumps({
        "total": total, "outcome": outcome.status.value, "fire": fire, "echo": data,
        "states": states, "late": late, "session": bool(session),
    }))


asyncio.run(main(sys.argv[1]))
"""


class AsyncioClientTests(ClientTestCase):
    @inlineCallbacks
    def test_asyncWithAndAwaitOverARealSocket(self) -> Any:
        hub = make_hub()
        notes: list[Any] = []
        hub.on("add", lambda ctx, data: data[0] + data[1])

        def note(ctx: Context, data: Any) -> None:
            notes.append(data)
            if data == "hi":
                ctx.send("echo", {"back": data})

        hub.on("note", note)
        server = ServerFixture(self, hub)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-c", SCRIPT, server.url], env=None
        )
        self.assertEqual(code, 0, err.decode(errors="replace"))
        result = json.loads(out.decode().strip().splitlines()[-1])
        self.assertEqual(
            result,
            {
                "total": 5,
                "outcome": "acked",
                "fire": None,
                "echo": {"back": "hi"},
                "states": ["closed"],
                "late": "refused",
                "session": True,
            },
        )
        self.assertEqual(notes, ["hi", "fire-and-forget"])

    def test_anotherReactorIsAClearError(self) -> None:
        """In this process the default reactor runs: the asyncio one cannot be installed."""
        import asyncio

        from warpsocket.client.aio import asyncio_reactor

        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        error = self.assertRaises(RuntimeError, asyncio_reactor, loop)
        self.assertIn("another reactor is installed", str(error))
