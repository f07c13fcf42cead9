"""warpsocket/_compat.py: each use of a Twisted or Autobahn private, and its fallback.

Every fallback is run by hiding the private attribute on the object at hand
(never by changing the installed library), as a release that renamed it would.
"""

from __future__ import annotations

import os
import pprint
import random
import socket
from typing import Any

from autobahn.websocket import xormasker
from twisted.internet import reactor, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from warpsocket import _compat
from warpsocket.server.tls_reload import reloadable_endpoint

CERTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "certs")
SSL = f"ssl:0:interface=127.0.0.1:privateKey={CERTS}/server.key:certKey={CERTS}/server.pem"


def hide(obj: Any, *names: str) -> None:
    """Make ``names`` missing on ``obj`` (instance and class alike), as if this
    release of the library had renamed them."""
    base = type(obj)
    hidden = frozenset(names)

    def __getattribute__(self: Any, name: str) -> Any:  # noqa: N807
        if name in hidden:
            raise AttributeError(name)
        return base.__getattribute__(self, name)

    obj.__class__ = type(base.__name__, (base,), {"__getattribute__": __getattribute__})


class Stub:
    """An object of a (heap) class of its own: ``hide`` can work on it."""

    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)


class TCPFixture:
    """A real ``tcp.Connection`` over a socket pair, never added to the reactor."""

    def __init__(self, test: TestCase) -> None:
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        test.addCleanup(ours.close)
        test.addCleanup(theirs.close)
        self.peer = theirs
        self.connection = tcp.Connection(ours, Protocol(), reactor)
        self.connection.connected = 1


class EagerWriteTests(TestCase):
    def test_sends_at_once_when_the_state_is_there(self) -> None:
        fixture = TCPFixture(self)
        socket = _compat.eager_socket(fixture.connection)
        assert socket is not None
        _compat.write_socket_first(Stub(_socket=socket, transport=None), b"frame")
        self.assertEqual(fixture.peer.recv(100), b"frame")

    def test_a_missing_private_turns_eager_writes_off(self) -> None:
        for name in ("_tempDataLen", "_aborting", "_writeDisconnected"):
            fixture = TCPFixture(self)
            hide(fixture.connection, name)
            self.assertIsNone(_compat.eager_socket(fixture.connection), name)

    def test_other_transports_are_not_written_eagerly(self) -> None:
        self.assertIsNone(_compat.eager_socket(Stub(write=print)))
        fixture = TCPFixture(self)
        fixture.connection.TLS = True
        self.assertIsNone(_compat.eager_socket(fixture.connection))


def waiting_fd(chunks: list[bytes], sent: bytes = b"", offset: int = 0) -> FileDescriptor:
    fd = FileDescriptor(reactor)
    fd.dataBuffer = sent
    fd.offset = offset
    fd._tempDataBuffer = list(chunks)
    fd._tempDataLen = sum(map(len, chunks))
    return fd


class OutboundMeterTests(TestCase):
    def test_socket_buffer_counts_the_pending_writes(self) -> None:
        fd = waiting_fd([b"abc", b"de"], sent=b"0123456789", offset=4)
        self.assertEqual(_compat.socket_buffered(fd), 6 + 5)
        self.assertEqual(_compat.socket_meter(fd)(), 6 + 5)

    def test_without_the_private_count_what_is_public(self) -> None:
        fd = waiting_fd([b"abc", b"de"], sent=b"0123456789", offset=4)
        hide(fd, "_tempDataLen")
        self.assertEqual(_compat.socket_buffered(fd), 6)
        self.assertEqual(_compat.socket_meter(fd)(), 6)

    def test_tls_cleartext_queue(self) -> None:
        tls = Stub(_appSendBuffer=[b"ab", b"cde"])
        self.assertEqual(_compat.tls_buffered(tls), 5)
        hide(tls, "_appSendBuffer")
        self.assertEqual(_compat.tls_buffered(tls), 0)


class DropUnsentTests(TestCase):
    def test_whole_writes_are_dropped_the_first_kept(self) -> None:
        fd = waiting_fd([b"rest", b"frame1", b"frame2"])
        self.assertEqual(_compat.drop_unsent_writes(fd), 12)
        self.assertEqual(fd._tempDataBuffer, [b"rest"])
        self.assertEqual(fd._tempDataLen, 4)

    def test_without_the_privates_nothing_is_dropped(self) -> None:
        for name in ("_tempDataBuffer", "_tempDataLen"):
            fd = waiting_fd([b"rest", b"frame1"])
            hide(fd, name)
            self.assertEqual(_compat.drop_unsent_writes(fd), 0, name)
            self.assertEqual(_compat.socket_buffered(fd), 0 if name == "_tempDataLen" else 10)


class MembraneTests(TestCase):
    def test_unwraps_or_returns_the_producer(self) -> None:
        inner = object()
        membrane = Stub(_producer=inner)
        self.assertIs(_compat.tls_membrane_producer(membrane), inner)
        hide(membrane, "_producer")
        self.assertIs(_compat.tls_membrane_producer(membrane), membrane)


class HAProxyTests(TestCase):
    def test_the_wrapper_class_is_recognised(self) -> None:
        from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper

        wrapper = HAProxyProtocolWrapper.__new__(HAProxyProtocolWrapper)
        self.assertTrue(_compat.is_haproxy_wrapper(wrapper))
        self.assertFalse(_compat.is_haproxy_wrapper(Protocol()))

    def test_without_the_private_module_by_its_name(self) -> None:
        self.patch(_compat, "_HAPROXY_WRAPPER", None)

        class HAProxyProtocolWrapper(Protocol):
            pass

        class Subclass(HAProxyProtocolWrapper):
            pass

        self.assertTrue(_compat.is_haproxy_wrapper(Subclass()))
        self.assertFalse(_compat.is_haproxy_wrapper(Protocol()))


class TLSReloadTests(TestCase):
    def test_the_ssl_endpoint_options_are_found_and_replaced(self) -> None:
        endpoint = serverFromString(reactor, SSL)
        self.assertIsNotNone(_compat.tls_context_factory(endpoint))
        replacement = object()
        _compat.set_tls_context_factory(endpoint, replacement)
        self.assertIs(_compat.tls_context_factory(endpoint), replacement)
        self.assertIsNone(_compat.tls_context_factory(serverFromString(reactor, "tcp:0")))

    def test_without_the_private_reload_says_it_cannot(self) -> None:
        endpoint = serverFromString(reactor, SSL)
        hide(endpoint, "_sslContextFactory")
        with self.assertRaises(_compat.TLSReloadUnsupportedError):
            _compat.tls_context_factory(endpoint)
        with self.assertRaises(_compat.TLSReloadUnsupportedError):
            _compat.set_tls_context_factory(endpoint, object())

    def test_reloadable_endpoint_raises_the_clear_error(self) -> None:
        self.patch(_compat, "_SSL_OPTIONS", "_renamedSslContextFactory")
        with self.assertRaises(_compat.TLSReloadUnsupportedError) as raised:
            reloadable_endpoint(reactor, SSL)
        self.assertIn("cannot be reloaded", str(raised.exception))


class AsyncioLoopTests(TestCase):
    def test_the_loop_or_none(self) -> None:
        loop = object()
        fake = Stub(_asyncioEventloop=loop)
        self.assertIs(_compat.asyncio_reactor_loop(fake), loop)
        hide(fake, "_asyncioEventloop")
        self.assertIsNone(_compat.asyncio_reactor_loop(fake))


class AutobahnTests(TestCase):
    def test_compression(self) -> None:
        protocol = Stub(_perMessageCompress=None)
        self.assertFalse(_compat.compression_negotiated(protocol))
        protocol._perMessageCompress = object()
        self.assertTrue(_compat.compression_negotiated(protocol))

    def test_without_the_private_compression_is_assumed(self) -> None:
        # (So every message takes Autobahn's own path, never the fast path.)
        protocol = Stub(_perMessageCompress=None)
        hide(protocol, "_perMessageCompress")
        self.assertTrue(_compat.compression_negotiated(protocol))

    def test_traffic_stats(self) -> None:
        protocol = Stub(trafficStats=Stub(incomingOctetsWireLevel=3))
        _compat.count_incoming_octets(protocol, 4)
        self.assertEqual(protocol.trafficStats.incomingOctetsWireLevel, 7)
        self.assertIs(_compat.traffic_stats(protocol), protocol.trafficStats)
        hide(protocol.trafficStats, "incomingOctetsWireLevel")
        self.assertIsNone(_compat.traffic_stats(protocol))  # the fast path counts nothing
        hide(protocol, "trafficStats")
        _compat.count_incoming_octets(protocol, 4)  # not counted, no error
        self.assertIsNone(_compat.traffic_stats(protocol))

    def test_auto_ping_timeout(self) -> None:
        calls: list[str] = []
        protocol = Stub(_cancelAutoPingTimeoutCall=lambda: calls.append("own"))
        _compat.cancel_auto_ping_timeout(protocol)
        self.assertEqual(calls, ["own"])

    def test_without_the_private_the_timeout_call_is_cancelled(self) -> None:
        clock = Clock()
        call = clock.callLater(5, lambda: None)
        protocol = Stub(_cancelAutoPingTimeoutCall=None, autoPingTimeoutCall=call)
        hide(protocol, "_cancelAutoPingTimeoutCall")
        _compat.cancel_auto_ping_timeout(protocol)
        self.assertFalse(call.active())
        self.assertIsNone(protocol.autoPingTimeoutCall)

    def test_option_dump_is_deferred(self) -> None:
        module = Stub(pformat=pprint.pformat)
        self.assertTrue(_compat.defer_option_dump(module))
        lazy = module.pformat([("a", 1)])
        self.assertNotIsInstance(lazy, str)
        self.assertEqual(str(lazy), pprint.pformat([("a", 1)]))
        self.assertEqual(module.pformat({"a": 1}), pprint.pformat({"a": 1}))

    def test_without_the_module_pformat_nothing_changes(self) -> None:
        module = Stub()
        self.assertFalse(_compat.defer_option_dump(module))
        self.assertFalse(hasattr(module, "pformat"))

    def test_type_names_are_deferred(self) -> None:
        from autobahn.util import hltype

        module, other = Stub(hltype=hltype), Stub(hltype=len)
        self.assertEqual(_compat.defer_type_names(module, other), 1)
        lazy = module.hltype(self.test_masker)
        self.assertNotIsInstance(lazy, str)
        self.assertEqual(str(lazy), hltype(self.test_masker))
        self.assertEqual(f"{lazy}", hltype(self.test_masker))
        self.assertIs(other.hltype, len)

    def test_masker(self) -> None:
        rng = random.Random(7)
        unmask = _compat.xor_masker()
        for size in (0, 1, 5, 513, 4000):
            payload = rng.randbytes(size)
            mask = rng.randbytes(4)
            self.assertEqual(unmask(payload, mask), _compat._python_unmask(payload, mask))

    def test_without_autobahns_masker_python_unmasks(self) -> None:
        original = xormasker.create_xor_masker  # type: ignore[attr-defined]
        del xormasker.create_xor_masker  # type: ignore[attr-defined]
        self.addCleanup(setattr, xormasker, "create_xor_masker", original)
        unmask = _compat.xor_masker()
        self.assertIs(unmask, _compat._python_unmask)
        self.assertEqual(
            unmask(b"\x00\x01\x02\x03\x04", b"\xff\x00\xff\x00"), b"\xff\x01\xfd\x03\xfb"
        )
