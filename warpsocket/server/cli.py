"""``twistd warpsocket``: command-line options and the service they build.

The plugin file in ``twisted/plugins/`` only points here. Every option is
validated in ``postOptions`` so that a bad value is a one-line usage error,
never a traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from warpsocket.core.dedup import DedupLimits
from warpsocket.core.history import HistoryLimits
from warpsocket.core.server import CoreOptions
from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.service import WarpSocketService

DEFAULT_ENDPOINT = "tcp:8080"


def _seconds(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number of seconds")
    return number


def _count(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be a positive integer")
    return number


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a WarpSocket server: reliable WebSockets with resume, acks and "
        "deduplication. The WebSocket path, /healthz and /metrics share each endpoint."
    )
    optFlags = [
        ["open-rooms", None, "Let clients subscribe and publish to any room (standalone mode)."],
        ["debug", None, "Log every envelope in and out."],
    ]
    optParameters = [
        ["path", None, "/ws", "URL path of the WebSocket endpoint."],
        ["node", None, "node", "Name of this node (in welcomes and ids)."],
        ["app", None, None, "module:callable called with the Hub to register handlers."],
        ["heartbeat-interval", None, 25.0, "Seconds between heartbeats.", _seconds],
        ["heartbeat-timeout", None, 60.0, "Seconds of silence before a peer is dead.", _seconds],
        [
            "idle-timeout",
            None,
            None,
            "Close connections without application traffic for this many seconds (default: never).",
            _seconds,
        ],
        ["handshake-timeout", None, 10.0, "Seconds allowed until hello arrives.", _seconds],
        ["session-ttl", None, 120.0, "Seconds a session outlives its connection.", _seconds],
        ["history-size", None, 1000, "Messages kept per stream for replay.", _count],
        ["history-age", None, 300.0, "Seconds messages are kept for replay.", _seconds],
        ["dedup-size", None, 100000, "Deduplication records kept per node.", _count],
        ["dedup-age", None, 300.0, "Seconds deduplication records are kept.", _seconds],
        ["max-message-size", None, 1048576, "Largest accepted message in bytes.", _count],
        ["shutdown-timeout", None, 10.0, "Seconds a graceful stop may take.", _seconds],
        [
            "reconnect-hint",
            None,
            2.0,
            "Seconds clients wait before reconnecting after a graceful stop.",
            _seconds,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["endpoints"] = []

    def opt_endpoint(self, description: str) -> None:
        """A Twisted server endpoint string (repeatable), e.g. tcp:8080 or
        ssl:8443:privateKey=key.pem:certKey=cert.pem. Default: tcp:8080."""
        self["endpoints"].append(description)

    def postOptions(self) -> None:
        if not self["endpoints"]:
            self["endpoints"] = [DEFAULT_ENDPOINT]
        from twisted.internet import reactor

        for description in self["endpoints"]:
            try:
                serverFromString(reactor, description)
            except Exception as exc:
                raise usage.UsageError(f"bad --endpoint {description!r}: {exc}") from None
        if not self["path"].startswith("/") or self["path"].strip("/") == "":
            raise usage.UsageError("--path must look like /ws")
        try:
            self["hub_options"] = hub_options_from(self)
        except ValueError as exc:
            raise usage.UsageError(str(exc)) from None
        if self["app"] is not None:
            self["app_callable"] = load_app(self["app"])


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def hub_options_from(options: Options) -> HubOptions:
    idle = options["idle-timeout"]
    core = CoreOptions(
        node=options["node"],
        session_ttl_ms=_ms(options["session-ttl"]),
        handshake_timeout_ms=_ms(options["handshake-timeout"]),
        heartbeat_interval_ms=_ms(options["heartbeat-interval"]),
        heartbeat_timeout_ms=_ms(options["heartbeat-timeout"]),
        idle_timeout_ms=None if idle is None else _ms(idle),
        max_message_size=options["max-message-size"],
        history=HistoryLimits(options["history-size"], _ms(options["history-age"])),
        dedup=DedupLimits(options["dedup-size"], _ms(options["dedup-age"])),
    )
    return HubOptions(
        core=core,
        shutdown_timeout=options["shutdown-timeout"],
        reconnect_hint_ms=_ms(options["reconnect-hint"]),
        debug=bool(options["debug"]),
        open_rooms=bool(options["open-rooms"]),
    )


def load_app(spec: str) -> Callable[[Hub], Any]:
    """Resolve ``package.module:callable``."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise usage.UsageError(f"--app must look like module:callable, not {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise usage.UsageError(f"--app: cannot import {module_name!r}: {exc}") from None
    target = getattr(module, attribute, None)
    if not callable(target):
        raise usage.UsageError(f"--app: {spec!r} is not a callable")
    return target  # type: ignore[no-any-return]


def makeService(options: Options) -> IService:
    hub = Hub(options["hub_options"])
    app = options.get("app_callable")
    if app is not None:
        app(hub)
    return WarpSocketService(hub, options["endpoints"], path=options["path"])
