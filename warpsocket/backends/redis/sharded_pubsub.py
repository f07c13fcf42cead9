"""Sharded pub/sub (Redis 7: ``SSUBSCRIBE``/``SPUBLISH``) on txredisapi's subscriber.

txredisapi knows ``message`` and ``pmessage`` only; a shard's subscriber also
gets ``smessage`` pushes, ``ssubscribe``/``sunsubscribe`` confirmations, and an
``sunsubscribe`` Redis sends by itself when a channel's slot moved to another
shard (the channel must be subscribed again where it lives now).
"""

from __future__ import annotations

from typing import Any

from warpsocket.backends.redis.connection import Subscriber

_CONFIRMATIONS = {"ssubscribe", "sunsubscribe", b"ssubscribe", b"sunsubscribe"}


class ShardSubscriber(Subscriber):
    """One shard's subscriber connection: one channel per command."""

    def replyReceived(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3:
            kind = reply[0]
            if kind in ("smessage", b"smessage"):
                self.messageReceived(None, reply[1], reply[2])
                return
            if kind in _CONFIRMATIONS and not self.replyQueue.waiting:
                # Nobody asked: the slot moved away from this shard.
                if kind in ("sunsubscribe", b"sunsubscribe"):
                    self.factory.on_slot_moved(reply[1])
                return
        super().replyReceived(reply)

    def ssubscribe(self, channel: str) -> Any:
        return self.execute_command("SSUBSCRIBE", channel, apply_timeout=False)

    def sunsubscribe(self, channel: str) -> Any:
        return self.execute_command("SUNSUBSCRIBE", channel)
