"""The Python half of the cross-language test:
python py_peer.py URL ROOM COUNT [SUBPROTOCOL].

Joins ROOM, prints ``ready``; when a ``go`` event arrives in the room it
publishes COUNT acknowledged ``msg`` events into it; once it has seen
2 * COUNT ``msg`` events (its own and the TypeScript client's) it prints every
room event it saw as one JSON line, ``[offset, event, data]`` each, and exits.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import defer, task

from warpsocket import ClientOptions, WarpSocketClient
from warpsocket.client.client import Message


async def main(reactor: Any, url: str, room: str, count: int, subprotocol: str) -> None:
    client = WarpSocketClient(url, ClientOptions(watch_network=False, subprotocol=subprotocol))
    seen: list[list[Any]] = []
    done: defer.Deferred[None] = defer.Deferred()
    sends: list[defer.Deferred[Any]] = []

    def on_event(message: Message) -> None:
        seen.append([message.offset, message.event, message.data])
        if message.event == "go" and not sends:
            for i in range(count):
                sent = client.send("msg", {"from": "py", "i": i}, room=room, ack=True)
                assert sent is not None
                sends.append(sent)
        if sum(1 for s in seen if s[1] == "msg") >= 2 * count and not done.called:
            done.callback(None)

    client.subscribe(room, on_event)
    await client.connect()
    print("ready", flush=True)
    await done
    await defer.gatherResults(sends)
    print(json.dumps(seen), flush=True)
    await client.close()


if __name__ == "__main__":
    url, room, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    subprotocol = sys.argv[4] if len(sys.argv) > 4 else "warpsocket.v1.json"
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, url, room, count, subprotocol)))
