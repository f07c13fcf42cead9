"""Client acknowledgements told to every node, over one pub/sub channel.

The node that sent a message may not be the one its client acknowledges it
on. Best effort: a notice lost in an outage leaves the sender's waiter to
time out; delivery never depends on it.
"""

from __future__ import annotations

import json

from twisted.logger import Logger

from warpsocket.backends.base import AckListener, AckNotice
from warpsocket.backends.redis.connection import RedisLink


class Acks:
    def __init__(self, connections: RedisLink, channel: str, log: Logger) -> None:
        self.connections = connections
        self.channel = channel
        self._log = log
        self.listener: AckListener | None = None

    def announce(self, notice: AckNotice) -> None:
        cmd = self.connections.cmd
        if cmd is None:
            return  # best effort: the sender's waiter times out
        body = json.dumps(
            {"s": notice.session, "e": notice.epoch, "t": notice.through, "r": notice.ref},
            separators=(",", ":"),
        )
        cmd.publish(self.channel, body).addErrback(lambda _: None)

    def on_message(self, message: str) -> None:
        """A notice from any node (this one included): hostile until parsed."""
        try:
            raw = json.loads(message)
            notice = AckNotice(
                session=_str(raw["s"]),
                epoch=_optional_str(raw.get("e")),
                through=_optional_int(raw.get("t")),
                ref=_optional_str(raw.get("r")),
            )
        except (ValueError, TypeError, KeyError):
            self._log.warn("bad ack notice on {channel}", channel=self.channel)
            return
        if self.listener is not None:
            self.listener(notice)


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _optional_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer")
    return value
