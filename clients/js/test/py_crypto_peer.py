"""The Python half of the cross-language crypto test:
python py_crypto_peer.py URL ROOM COUNT ROOM_KEY_HEX HMAC_SECRET_HEX SERVER_PUBLIC_HEX

Joins ROOM with end-to-end encryption (key id ``room-1``) and HMAC
signatures (key id ``shared``), trusting the server's Ed25519 key
(``server``); prints ``ready``; when a ``go`` event arrives it publishes
COUNT sealed ``msg`` events; once it has seen 2 * COUNT ``msg`` events it
prints every room event it saw, decrypted, as one JSON line and exits.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import defer, task

from warpsocket import ClientOptions, WarpSocketClient
from warpsocket.client.client import Message
from warpsocket.crypto.e2e import KeyRing
from warpsocket.crypto.signing import Ed25519Key, HmacKey, SignatureKeys


async def main(reactor: Any, url: str, room: str, count: int, *keys: str) -> None:
    room_key, secret, server_public = (bytes.fromhex(k) for k in keys)
    signing = SignatureKeys.of(
        [HmacKey("shared", secret), Ed25519Key.from_public("server", server_public)], "shared"
    )
    options = ClientOptions(
        watch_network=False, e2e=KeyRing({"room-1": room_key}, "room-1"), signing=signing
    )
    client = WarpSocketClient(url, options)
    seen: list[list[Any]] = []
    done: defer.Deferred[None] = defer.Deferred()
    sends: list[defer.Deferred[Any]] = []
    client.on_crypto_error(lambda failure: print("refused", failure.code, file=sys.stderr))

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
    print("ready", json.dumps(sorted(client.extensions)), flush=True)
    await done
    await defer.gatherResults(sends)
    print(json.dumps(seen), flush=True)
    await client.close()


if __name__ == "__main__":
    url, room, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    keys = sys.argv[4:7]
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, url, room, count, *keys)))
