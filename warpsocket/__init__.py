"""WarpSocket: reliable, auto-recovering WebSockets on Twisted and Autobahn.

No message lost, duplicated or reordered as the application sees it, across
disconnects and reconnects, within a configured retention window; and an
explicit ``recovered: false`` where the window is exceeded.
"""

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
from warpsocket.client.options import ClientOptions, DisconnectCause, default_should_reconnect
from warpsocket.client.state import ClientState
from warpsocket.core.backoff import Backoff
from warpsocket.core.client import ClientCoreOptions, Outcome, QueuePolicy, Status
from warpsocket.core.dedup import DedupLimits
from warpsocket.core.history import HistoryLimits
from warpsocket.core.server import CoreOptions
from warpsocket.protocol import (
    JSON_SUBPROTOCOL,
    MSGPACK_SUBPROTOCOL,
    Codec,
    CodecRegistry,
    Envelope,
    ErrorCode,
    MessageType,
    ProtocolError,
    default_codecs,
)
from warpsocket.server.context import Context
from warpsocket.server.hub import AckTimeoutError, Hub, HubOptions
from warpsocket.server.middleware import Handshake, LoggingMiddleware, Middleware, Reject
from warpsocket.server.service import WarpSocketService

__version__ = "0.1.0"

__all__ = [
    "JSON_SUBPROTOCOL",
    "MSGPACK_SUBPROTOCOL",
    "AckTimeoutError",
    "AsyncClient",
    "Backoff",
    "BlockingClient",
    "ClientClosedError",
    "ClientCoreOptions",
    "ClientOptions",
    "ClientState",
    "ClientStats",
    "Codec",
    "CodecRegistry",
    "ConnectTimeoutError",
    "Context",
    "CoreOptions",
    "DedupLimits",
    "DeliveryError",
    "DisconnectCause",
    "Envelope",
    "ErrorCode",
    "Handshake",
    "HistoryLimits",
    "Hub",
    "HubOptions",
    "LoggingMiddleware",
    "Message",
    "MessageType",
    "Middleware",
    "Opened",
    "Outcome",
    "ProtocolError",
    "QueuePolicy",
    "Reject",
    "Status",
    "WarpSocketClient",
    "WarpSocketService",
    "__version__",
    "default_codecs",
    "default_should_reconnect",
]
