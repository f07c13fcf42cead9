"""WarpSocket: reliable, auto-recovering WebSockets on Twisted and Autobahn.

No message lost, duplicated or reordered as the application sees it, across
disconnects and reconnects, within a configured retention window; and an
explicit ``recovered: false`` where the window is exceeded.

Everything an application imports is importable from here. The names are
loaded on first use, so ``import warpsocket.protocol`` (sans-I/O) does not
import Twisted, and ``import warpsocket`` costs nothing until a name is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warpsocket.backends.base import Backend, BackendUnavailableError
    from warpsocket.backends.memory import MemoryBackend
    from warpsocket.backends.redis.backend import RedisBackend
    from warpsocket.backends.redis.options import RedisOptions
    from warpsocket.client.aio import AsyncClient
    from warpsocket.client.blocking import BlockingClient
    from warpsocket.client.client import (
        ClientClosedError,
        ClientStats,
        ConnectTimeoutError,
        DeliveryError,
        Message,
        Opened,
        WarpSocketClient,
    )
    from warpsocket.client.observe import SlowAck
    from warpsocket.client.options import ClientOptions, DisconnectCause, default_should_reconnect
    from warpsocket.client.pool import ClientPool
    from warpsocket.client.state import ClientState
    from warpsocket.core.backoff import Backoff
    from warpsocket.core.client import ClientCoreOptions, Outcome, QueuePolicy, Status
    from warpsocket.core.dedup import DedupLimits
    from warpsocket.core.history import HistoryLimits
    from warpsocket.core.server import CoreOptions, QueueFullError, UnknownSessionError
    from warpsocket.crypto.client import CryptoFailure
    from warpsocket.crypto.e2e import E2EError, KeyProvider, KeyRing, ScopedKeys, Sealer
    from warpsocket.crypto.hub import SigningOptions
    from warpsocket.crypto.keyfile import load_signature_keys
    from warpsocket.crypto.replay import ReplayGuard
    from warpsocket.crypto.signing import Ed25519Key, HmacKey, SignatureError, SignatureKeys
    from warpsocket.protocol.codecs import (
        JSON_SUBPROTOCOL,
        MSGPACK_SUBPROTOCOL,
        Codec,
        CodecRegistry,
        default_codecs,
    )
    from warpsocket.protocol.codes import ErrorCode, ProtocolError
    from warpsocket.protocol.datamodel import DataLimits, DataModelError
    from warpsocket.protocol.envelope import Envelope, MessageType
    from warpsocket.protocol.tracecontext import TraceContext
    from warpsocket.server.context import Context
    from warpsocket.server.hub import Hub
    from warpsocket.server.middleware import Handshake, LoggingMiddleware, Middleware, Reject
    from warpsocket.server.observe.slow import SlowEvent, SlowThresholds
    from warpsocket.server.options import HubOptions
    from warpsocket.server.outbox import AckTimeoutError
    from warpsocket.server.security.auth import (
        Authenticator,
        AuthError,
        ClaimsPolicy,
        Identity,
        JWTAuthenticator,
        StaticKeyAuthenticator,
    )
    from warpsocket.server.security.config import SecurityOptions
    from warpsocket.server.service import WarpSocketService
    from warpsocket.server.session_info import SessionInfo
    from warpsocket.transfer.client import ClientTransfers, OutgoingTransfer, ReceivingTransfer
    from warpsocket.transfer.errors import TransferError
    from warpsocket.transfer.server import IncomingTransfer, TransferOptions, TransferServer

__version__ = "0.1.0"

# Public name -> the module that defines it (read by __getattr__ below; the
# TYPE_CHECKING imports above say the same for type checkers, and
# tests/test_public_api.py holds the two to each other).
_EXPORTS: dict[str, str] = {
    # The server.
    "Hub": "warpsocket.server.hub",
    "HubOptions": "warpsocket.server.options",
    "SlowAck": "warpsocket.client.observe",
    "SlowEvent": "warpsocket.server.observe.slow",
    "SlowThresholds": "warpsocket.server.observe.slow",
    "TraceContext": "warpsocket.protocol.tracecontext",
    "AckTimeoutError": "warpsocket.server.outbox",
    "WarpSocketService": "warpsocket.server.service",
    "Context": "warpsocket.server.context",
    "SessionInfo": "warpsocket.server.session_info",
    "Handshake": "warpsocket.server.middleware",
    "Middleware": "warpsocket.server.middleware",
    "LoggingMiddleware": "warpsocket.server.middleware",
    "Reject": "warpsocket.server.middleware",
    "CoreOptions": "warpsocket.core.server",
    "UnknownSessionError": "warpsocket.core.server",
    "QueueFullError": "warpsocket.core.server",
    "HistoryLimits": "warpsocket.core.history",
    "DedupLimits": "warpsocket.core.dedup",
    # Security.
    "SecurityOptions": "warpsocket.server.security.config",
    "Authenticator": "warpsocket.server.security.auth",
    "AuthError": "warpsocket.server.security.auth",
    "Identity": "warpsocket.server.security.auth",
    "JWTAuthenticator": "warpsocket.server.security.auth",
    "StaticKeyAuthenticator": "warpsocket.server.security.auth",
    "ClaimsPolicy": "warpsocket.server.security.auth",
    # Backends.
    "Backend": "warpsocket.backends.base",
    "BackendUnavailableError": "warpsocket.backends.base",
    "MemoryBackend": "warpsocket.backends.memory",
    "RedisBackend": "warpsocket.backends.redis.backend",
    "RedisOptions": "warpsocket.backends.redis.options",
    # The client.
    "WarpSocketClient": "warpsocket.client.client",
    "AsyncClient": "warpsocket.client.aio",
    "ConnectTimeoutError": "warpsocket.client.client",
    "Opened": "warpsocket.client.client",
    "DisconnectCause": "warpsocket.client.options",
    "default_should_reconnect": "warpsocket.client.options",
    "BlockingClient": "warpsocket.client.blocking",
    "ClientOptions": "warpsocket.client.options",
    "ClientState": "warpsocket.client.state",
    "ClientStats": "warpsocket.client.client",
    "ClientClosedError": "warpsocket.client.client",
    "DeliveryError": "warpsocket.client.client",
    "Message": "warpsocket.client.client",
    "ClientCoreOptions": "warpsocket.core.client",
    "Outcome": "warpsocket.core.client",
    "QueuePolicy": "warpsocket.core.client",
    "Status": "warpsocket.core.client",
    "Backoff": "warpsocket.core.backoff",
    # Encryption and signatures (protocol.md, the extension sections).
    "KeyProvider": "warpsocket.crypto.e2e",
    "KeyRing": "warpsocket.crypto.e2e",
    "ScopedKeys": "warpsocket.crypto.e2e",
    "Sealer": "warpsocket.crypto.e2e",
    "E2EError": "warpsocket.crypto.e2e",
    "SignatureKeys": "warpsocket.crypto.signing",
    "HmacKey": "warpsocket.crypto.signing",
    "Ed25519Key": "warpsocket.crypto.signing",
    "SignatureError": "warpsocket.crypto.signing",
    "SigningOptions": "warpsocket.crypto.hub",
    "ReplayGuard": "warpsocket.crypto.replay",
    "CryptoFailure": "warpsocket.crypto.client",
    "load_signature_keys": "warpsocket.crypto.keyfile",
    "ClientPool": "warpsocket.client.pool",
    # Chunked transfers (the ``chunks`` extension).
    "TransferServer": "warpsocket.transfer.server",
    "TransferOptions": "warpsocket.transfer.server",
    "IncomingTransfer": "warpsocket.transfer.server",
    "ClientTransfers": "warpsocket.transfer.client",
    "OutgoingTransfer": "warpsocket.transfer.client",
    "ReceivingTransfer": "warpsocket.transfer.client",
    "TransferError": "warpsocket.transfer.errors",
    # The wire.
    "Envelope": "warpsocket.protocol.envelope",
    "MessageType": "warpsocket.protocol.envelope",
    "ErrorCode": "warpsocket.protocol.codes",
    "ProtocolError": "warpsocket.protocol.codes",
    "DataLimits": "warpsocket.protocol.datamodel",
    "DataModelError": "warpsocket.protocol.datamodel",
    "Codec": "warpsocket.protocol.codecs",
    "CodecRegistry": "warpsocket.protocol.codecs",
    "default_codecs": "warpsocket.protocol.codecs",
    "JSON_SUBPROTOCOL": "warpsocket.protocol.codecs",
    "MSGPACK_SUBPROTOCOL": "warpsocket.protocol.codecs",
}

__all__ = [
    "JSON_SUBPROTOCOL",
    "MSGPACK_SUBPROTOCOL",
    "AckTimeoutError",
    "AsyncClient",
    "AuthError",
    "Authenticator",
    "Backend",
    "BackendUnavailableError",
    "Backoff",
    "BlockingClient",
    "ClaimsPolicy",
    "ClientClosedError",
    "ClientCoreOptions",
    "ClientOptions",
    "ClientPool",
    "ClientState",
    "ClientStats",
    "ClientTransfers",
    "Codec",
    "CodecRegistry",
    "ConnectTimeoutError",
    "Context",
    "CoreOptions",
    "CryptoFailure",
    "DataLimits",
    "DataModelError",
    "DedupLimits",
    "DeliveryError",
    "DisconnectCause",
    "E2EError",
    "Ed25519Key",
    "Envelope",
    "ErrorCode",
    "Handshake",
    "HistoryLimits",
    "HmacKey",
    "Hub",
    "HubOptions",
    "Identity",
    "IncomingTransfer",
    "JWTAuthenticator",
    "KeyProvider",
    "KeyRing",
    "LoggingMiddleware",
    "MemoryBackend",
    "Message",
    "MessageType",
    "Middleware",
    "Opened",
    "Outcome",
    "OutgoingTransfer",
    "ProtocolError",
    "QueueFullError",
    "QueuePolicy",
    "ReceivingTransfer",
    "RedisBackend",
    "RedisOptions",
    "Reject",
    "ReplayGuard",
    "ScopedKeys",
    "Sealer",
    "SecurityOptions",
    "SessionInfo",
    "SignatureError",
    "SignatureKeys",
    "SigningOptions",
    "SlowAck",
    "SlowEvent",
    "SlowThresholds",
    "StaticKeyAuthenticator",
    "Status",
    "TraceContext",
    "TransferError",
    "TransferOptions",
    "TransferServer",
    "UnknownSessionError",
    "WarpSocketClient",
    "WarpSocketService",
    "__version__",
    "default_codecs",
    "default_should_reconnect",
    "load_signature_keys",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
