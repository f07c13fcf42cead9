"""``CommandProtocol``'s replies to ``send_commands`` batches, taken straight from
hiredis's reader: split over reads, among txredisapi's own commands, converted
as txredisapi converts them, and left to txredisapi during a MULTI.

The connection is fed bytes as Redis would send them (tests/test_redis_dedup.py
runs the same path against a real redis-server)."""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from warpsocket.backends.redis import parse_redis_url
from warpsocket.backends.redis.connection import CommandProtocol, ConnectionFactory
from warpsocket.server.wire.batching import WriteBatch

PING = b"*1\r\n$4\r\nPING\r\n"


class PipelinedReplyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.batch = WriteBatch()
        factory = ConnectionFactory(
            CommandProtocol, parse_redis_url("redis://127.0.0.1:1"), None, batch=self.batch
        )
        self.command: Any = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.command.makeConnection(self.transport)
        self.heard: list[Any] = []
        self.failed: list[Any] = []

    def send(self, count: int) -> None:
        self.command.send_commands(PING * count, count, self.heard.append, self.failed.append)

    def test_a_batch_split_over_reads_is_answered_once_whole(self) -> None:
        self.send(3)
        self.command.dataReceived(b"+OK\r\n+O")
        self.assertEqual(self.heard, [])
        self.command.dataReceived(b"K\r\n$-1\r")
        self.assertEqual(self.heard, [])
        self.command.dataReceived(b"\n")
        self.assertEqual(self.heard, [["OK", "OK", None]])
        self.assertEqual(len(self.command._expected), 0)

    def test_replies_are_converted_as_txredisapi_converts_them(self) -> None:
        self.send(5)
        self.command.dataReceived(
            b"$5\r\nhello\r\n:42\r\n-ERR wrong\r\n$2\r\n\xff\xfe\r\n*2\r\n$1\r\na\r\n:1\r\n"
        )
        [replies] = self.heard
        self.assertEqual(replies[0], "hello")  # text, in the connection's charset
        self.assertEqual(replies[1], 42)
        self.assertIsInstance(replies[2], txredisapi.ResponseError)
        self.assertEqual(str(replies[2]), "ERR wrong")
        self.assertEqual(replies[3], b"\xff\xfe")  # not UTF-8: kept as bytes
        self.assertEqual(replies[4], ["a", 1])

    def test_batches_and_txredisapi_commands_keep_their_order_in_one_read(self) -> None:
        got: list[Any] = []
        self.send(2)
        self.command.get("k").addCallback(got.append)
        self.command.send_commands(PING, 1, self.heard.append, self.failed.append)
        self.command.get("j").addCallback(got.append)
        self.command.dataReceived(b"+A\r\n+B\r\n$1\r\nx\r\n+C\r\n$1\r\ny\r\n")
        self.assertEqual(self.heard, [["A", "B"], ["C"]])
        self.assertEqual(got, ["x", "y"])
        self.assertEqual(self.failed, [])

    def test_answers_are_decided_inside_one_write_batch(self) -> None:
        depths: list[int] = []
        self.command.send_commands(
            PING * 2, 2, lambda _: depths.append(self.batch.depth), self.failed.append
        )
        self.command.send_commands(
            PING, 1, lambda _: depths.append(self.batch.depth), self.failed.append
        )
        self.command.dataReceived(b"+OK\r\n+OK\r\n+OK\r\n")
        self.assertEqual(depths, [1, 1])
        self.assertEqual(self.batch.depth, 0)

    def test_a_listener_that_drops_the_connection_fails_the_batches_behind_it(self) -> None:
        def drop(replies: list[Any]) -> None:
            self.heard.append(replies)
            self.command.connectionLost(txredisapi.ConnectionError("dropped"))

        self.command.send_commands(PING, 1, drop, self.failed.append)
        self.send(1)
        self.command.dataReceived(b"+OK\r\n+OK\r\n")
        self.assertEqual(self.heard, [["OK"]])
        self.assertEqual(len(self.failed), 1)
        self.assertIsInstance(self.failed[0], txredisapi.ConnectionError)

    def test_during_a_multi_replies_go_through_txredisapi(self) -> None:
        self.send(1)
        self.command.inTransaction = True  # (as MULTI or WATCH leaves it)
        taken: list[Any] = []
        self.command.tryConvertData = lambda data: taken.append(data) or data
        self.command.dataReceived(b"+OK\r\n")
        self.assertEqual(taken, [b"OK"])  # txredisapi's own conversion ran
        self.assertEqual(self.heard, [[b"OK"]])

    def test_a_batch_answered_cancels_its_reply_timer(self) -> None:
        clock = Clock()
        self.command.callLater = clock.callLater
        self.command.replyTimeout = 5
        self.send(1)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.command.dataReceived(b"+OK\r\n")
        self.assertEqual(self.heard, [["OK"]])
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10)
        self.assertFalse(self.transport.disconnecting)  # not timed out afterwards

    def test_a_connection_that_converts_numbers_is_left_to_txredisapi(self) -> None:
        self.command.convertNumbers = True
        self.send(2)
        self.command.dataReceived(b"$2\r\n42\r\n$3\r\n1.5\r\n")
        self.assertEqual(self.heard, [[42, 1.5]])  # txredisapi's conversion

    def test_without_a_charset_text_stays_bytes(self) -> None:
        self.command.charset = None
        self.send(2)
        self.command.dataReceived(b"$5\r\nhello\r\n+OK\r\n")
        self.assertEqual(self.heard, [[b"hello", b"OK"]])

    def test_a_command_sent_by_a_listener_mid_read_waits_its_turn(self) -> None:
        """As the dedup's error path does (a script call from inside ``answered``):
        the rest of the read still goes to the batches sent before it."""
        got: list[Any] = []

        def resend(replies: list[Any]) -> None:
            self.heard.append(replies)
            self.command.get("x").addCallback(got.append)

        self.command.send_commands(PING, 1, resend, self.failed.append)
        self.send(1)
        self.command.dataReceived(b"+A\r\n+B\r\n")
        self.assertEqual(self.heard, [["A"], ["B"]])
        self.assertEqual(got, [])
        self.command.dataReceived(b"$1\r\nv\r\n")
        self.assertEqual(got, ["v"])
        self.assertEqual(self.failed, [])

    def test_a_protocol_error_mid_batch_raises_with_the_batch_unanswered(self) -> None:
        self.send(2)
        with self.assertRaises(txredisapi.InvalidData):
            self.command.dataReceived(b"+OK\r\n!not a reply\r\n")
        self.assertEqual(self.heard, [])
        self.assertEqual(self.batch.depth, 0)  # the write batch closed all the same
