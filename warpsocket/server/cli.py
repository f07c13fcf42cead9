"""``twistd warpsocket``: command-line options and the service they build.

The plugin file in ``twisted/plugins/`` only points here. Every option is
validated in ``postOptions`` so that a bad value is a one-line usage error,
never a traceback.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from warpsocket.backends.redis import redis_backend_from_options
from warpsocket.core.dedup import DedupLimits
from warpsocket.core.history import HistoryLimits
from warpsocket.core.server import CoreOptions
from warpsocket.crypto.hub import SigningOptions
from warpsocket.crypto.keyfile import load_signature_keys
from warpsocket.server.demo import demo_origins
from warpsocket.server.http_api import load_api_keys
from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.observe.inspect import load_inspect_key
from warpsocket.server.observe.logs import LOG_FORMATS, log_observer, use_for_twistd
from warpsocket.server.observe.slow import SlowThresholds
from warpsocket.server.security.auth import JWTAuthenticator
from warpsocket.server.security.config import SecurityOptions
from warpsocket.server.service import EndpointListener, WarpSocketService
from warpsocket.server.web import (
    add_demo,
    add_http_api,
    add_inspector,
    build_metrics_site,
    remove_metrics,
)

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


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be an integer >= 0")
    return number


def _rate(value: str) -> float:
    number = float(value)
    if not 0 < number < float("inf"):
        raise ValueError("must be a positive number per second")
    return number


def _api_rate(value: str) -> float:
    number = float(value)
    if not 0 <= number < float("inf"):
        raise ValueError("must be a number per second >= 0 (0: no limit)")
    return number


def _leeway(value: str) -> float:
    number = float(value)
    if not 0 <= number < float("inf"):
        raise ValueError("must be a number of seconds >= 0")
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
        [
            "require-auth",
            None,
            "Refuse connections without a valid token (the default once a JWT key is set).",
        ],
        [
            "optional-auth",
            None,
            "Verify tokens when presented but admit browsers from allowed origins without one.",
        ],
        ["allow-null-origin", None, "Accept the opaque 'null' Origin (sandboxed frames, file:)."],
        [
            "allow-query-token",
            None,
            "Also accept the token in the ?token= query parameter (it may end up in logs).",
        ],
        ["compression", None, "Accept permessage-deflate (size limits apply inflated)."],
        # Observability (docs/observability.md).
        [
            "tracing",
            None,
            "OpenTelemetry spans, with the global tracer provider (needs the otel extra).",
        ],
        # The live demo (docs/browser.md).
        [
            "demo",
            None,
            "Serve the live demo chat at /demo; implies --open-rooms (a demo server).",
        ],
        # Envelope signatures (protocol.md "Extension: signatures", docs/security.md).
        ["sign-required", None, "Refuse unsigned envelopes from every client (4601)."],
        # Batches (protocol.md "Extension: batches").
        ["no-batches", None, "Do not offer the batch extension (many envelopes in one frame)."],
    ]
    optParameters = [
        ["path", None, "/ws", "URL path of the WebSocket endpoint."],
        [
            "metrics-endpoint",
            None,
            None,
            "Serve /metrics only on this endpoint (e.g. tcp:9100:interface=127.0.0.1), "
            "not on the public ones.",
        ],
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
        ["history-bytes", None, 16 * 1024 * 1024, "Bytes kept per stream for replay.", _count],
        [
            "history-node-bytes",
            None,
            512 * 1024 * 1024,
            "Bytes kept for replay by all of this node's in-memory streams together.",
            _count,
        ],
        ["dedup-size", None, 100000, "Deduplication records kept per node.", _count],
        ["dedup-age", None, 300.0, "Seconds deduplication records are kept.", _seconds],
        ["max-message-size", None, 1048576, "Largest accepted message in bytes.", _count],
        [
            "shutdown-timeout",
            None,
            10.0,
            "Seconds clients get to leave once told to (then the rest are cut).",
            _seconds,
        ],
        [
            "drain-delay",
            None,
            0.0,
            "Seconds a stop keeps serving with /healthz at 503 before telling clients to go "
            "(a load balancer's pre-stop period).",
            _leeway,
        ],
        [
            "reconnect-hint",
            None,
            2.0,
            "Seconds clients wait before reconnecting after a graceful stop.",
            _seconds,
        ],
        [
            "redis",
            None,
            None,
            "Cluster through Redis: redis://[:password@]host:port/db (rediss:// for TLS). "
            "Default: in-memory, this node alone.",
        ],
        ["redis-service", None, "mymaster", "Sentinel service name (with --redis-sentinel)."],
        ["redis-prefix", None, "warpsocket:", "Key prefix, to share one Redis among apps."],
        [
            "api-key-file",
            None,
            None,
            "FILE of keys (one a line) that enable the HTTP server API under /api/.",
        ],
        ["jwt-secret", None, None, "FILE holding the HMAC secret for HS256/384/512 tokens."],
        ["jwt-public-key", None, None, "FILE holding the PEM public key (or certificate)."],
        ["jwt-audience", None, None, "Required 'aud' of tokens."],
        ["jwt-issuer", None, None, "Required 'iss' of tokens."],
        ["jwt-leeway", None, 0.0, "Seconds of clock skew allowed on exp/nbf/iat.", _leeway],
        ["trusted-proxies", None, 0, "X-Forwarded-For hops to trust (0: none).", _non_negative],
        ["max-connections", None, 10_000, "Open connections per node.", _count],
        ["max-connections-per-ip", None, 256, "Open connections per address (IPv6: /64).", _count],
        ["connection-rate", None, 20.0, "New connections per second per address.", _rate],
        ["connection-burst", None, None, "Burst of new connections (default 5x rate).", _count],
        ["message-rate", None, 1000.0, "Messages per second per connection.", _rate],
        ["message-burst", None, None, "Burst of messages (default 2x rate).", _count],
        [
            "max-outbound-buffer",
            None,
            4_194_304,
            "Bytes a connection may have unsent before it counts as a slow consumer.",
            _count,
        ],
        [
            "slow-consumer-grace",
            None,
            10.0,
            "Seconds a connection may stay over --max-outbound-buffer.",
            _seconds,
        ],
        # Observability (docs/observability.md).
        ["log-format", None, "text", "Log lines: text (readable) or json (one object a line)."],
        [
            "inspect-key-file",
            None,
            None,
            "FILE holding the key of the live inspector at /inspect (off without it).",
        ],
        ["slow-handler", None, None, "Warn when a handler takes longer (seconds).", _seconds],
        [
            "slow-delivery",
            None,
            None,
            "Warn when a message reaches this node's members later than this after publish.",
            _seconds,
        ],
        ["slow-ack", None, None, "Warn when an acked send waits longer for its ack.", _seconds],
        [
            "slow-buffer",
            None,
            None,
            "Warn when a connection's outbound buffer stays undrained this long.",
            _seconds,
        ],
        # HTTP API rate limits (issue 15): one token bucket per API key.
        ["api-rate", None, 100.0, "HTTP API requests per second per key (0: no limit).", _api_rate],
        ["api-burst", None, 200, "HTTP API requests a key may save up for a burst.", _count],
        # Mock server (docs/mock.md): play a scenario file instead of serving an app alone.
        ["mock", None, None, "Play the scenario FILE (JSON, or YAML with the mock extra)."],
        # Envelope signatures (protocol.md "Extension: signatures", docs/security.md).
        ["sign-key-file", None, None, "JSON file of signature keys: verify clients, sign replies."],
        ["sign-window", None, 300.0, "Replay window of signed envelopes, seconds.", _seconds],
        ["sign-max-ids", None, 100_000, "Signed envelope ids remembered per node.", _count],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["endpoints"] = []
        self["allowed_origins"] = []
        self["jwt_algorithms"] = []
        self["allow_ips"] = []
        self["deny_ips"] = []
        self["redis_sentinels"] = []
        self["redis_cluster"] = []  # Redis Cluster (--redis-cluster)

    def opt_allow_origin(self, origin: str) -> None:
        """An allowed Origin, exactly scheme://host[:port] (repeatable); '*' for any."""
        self["allowed_origins"].append(origin)

    def opt_jwt_algorithm(self, algorithm: str) -> None:
        """A JWT algorithm to accept (repeatable); default HS256 or RS256 by key."""
        self["jwt_algorithms"].append(algorithm)

    def opt_allow_ip(self, cidr: str) -> None:
        """Accept only these addresses, IPv4 or IPv6 CIDR (repeatable)."""
        self["allow_ips"].append(cidr)

    def opt_deny_ip(self, cidr: str) -> None:
        """Refuse these addresses, IPv4 or IPv6 CIDR (repeatable); deny wins."""
        self["deny_ips"].append(cidr)

    def opt_redis_sentinel(self, address: str) -> None:
        """A Redis Sentinel host:port (repeatable); finds the master of --redis-service."""
        self["redis_sentinels"].append(address)

    # Redis Cluster: seed nodes of a sharded cluster (docs/cluster.md).
    def opt_redis_cluster(self, address: str) -> None:
        """A Redis Cluster node host:port (repeatable); the other nodes are discovered."""
        self["redis_cluster"].append(address)

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
        if self["metrics-endpoint"] is not None:
            try:
                serverFromString(reactor, self["metrics-endpoint"])
            except Exception as exc:
                raise usage.UsageError(f"bad --metrics-endpoint: {exc}") from None
        if not self["path"].startswith("/") or self["path"].strip("/") == "":
            raise usage.UsageError("--path must look like /ws")
        # The live demo: open rooms, and the page's own loopback origins.
        if self["demo"]:
            self["open-rooms"] = 1
            if not self["allowed_origins"]:
                self["allowed_origins"].extend(demo_origins(self["endpoints"]))
        try:
            self["hub_options"] = hub_options_from(self)
        except ValueError as exc:
            raise usage.UsageError(str(exc)) from None
        if self["redis"] is not None or self["redis_sentinels"] or self["redis_cluster"]:
            given = [self["redis"] is not None, bool(self["redis_sentinels"])]
            given.append(bool(self["redis_cluster"]))  # Redis Cluster
            if sum(given) > 1:
                raise usage.UsageError("give one of --redis, --redis-sentinel, --redis-cluster")
            try:
                self["backend"] = redis_backend_from_options(
                    self["redis"],
                    self["redis_sentinels"],
                    self["redis-service"],
                    self["redis-prefix"],
                    self["hub_options"].core.history,
                    node=self["node"],
                    cluster=self["redis_cluster"],
                )
            except ValueError as exc:
                raise usage.UsageError(f"bad Redis option: {exc}") from None
        if self["api-key-file"] is not None:
            try:
                self["api_keys"] = load_api_keys(self["api-key-file"])
            except ValueError as exc:
                raise usage.UsageError(str(exc)) from None
        if self["app"] is not None:
            self["app_callable"] = load_app(self["app"])
        observability_options(self)
        # Mock server (docs/mock.md): the scenario is checked whole before anything starts.
        if self["mock"] is not None:
            from warpsocket.mock.options import check_mock_options

            self["mock_scenario"] = check_mock_options(self)


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
        history=HistoryLimits(
            options["history-size"],
            _ms(options["history-age"]),
            options["history-bytes"],
            options["history-node-bytes"],
        ),
        dedup=DedupLimits(options["dedup-size"], _ms(options["dedup-age"])),
    )
    return HubOptions(
        core=core,
        shutdown_timeout=options["shutdown-timeout"],
        drain_delay=options["drain-delay"],
        reconnect_hint_ms=_ms(options["reconnect-hint"]),
        debug=bool(options["debug"]),
        open_rooms=bool(options["open-rooms"]),
        security=security_options_from(options),
        # Observability (docs/observability.md).
        tracing=bool(options["tracing"]),
        slow=SlowThresholds(
            handler=options["slow-handler"],
            delivery=options["slow-delivery"],
            ack=options["slow-ack"],
            buffer=options["slow-buffer"],
        ),
        inspect=options["inspect-key-file"] is not None,
        signing=signing_options_from(options),
        # Batches (protocol.md "Extension: batches").
        batches=not options["no-batches"],
    )


def signing_options_from(options: Options) -> SigningOptions | None:
    """``--sign-key-file`` and its companions (envelope signatures)."""
    if options["sign-key-file"] is None:
        if options["sign-required"]:
            raise ValueError("--sign-required needs --sign-key-file")
        return None
    return SigningOptions(
        load_signature_keys(options["sign-key-file"]),
        window_ms=_ms(options["sign-window"]),
        max_entries=options["sign-max-ids"],
        required=bool(options["sign-required"]),
    )


def observability_options(options: Options) -> None:
    """The log format and the inspector's key (docs/observability.md)."""
    if options["log-format"] not in LOG_FORMATS:
        raise usage.UsageError(f"--log-format must be one of {', '.join(LOG_FORMATS)}")
    if options["tracing"]:
        try:
            import opentelemetry.trace  # noqa: F401
        except ImportError:
            raise usage.UsageError(
                "--tracing needs the otel extra (pip install warpsocket[otel])"
            ) from None
    if options["inspect-key-file"] is not None:
        try:
            options["inspect_key"] = load_inspect_key(options["inspect-key-file"])
        except ValueError as exc:
            raise usage.UsageError(str(exc)) from None


def _read_key(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path!r}: {exc.strerror}") from None


def jwt_authenticator_from(options: Options) -> JWTAuthenticator | None:
    secret, public = options["jwt-secret"], options["jwt-public-key"]
    if secret is not None and public is not None:
        raise ValueError("give --jwt-secret or --jwt-public-key, not both")
    if secret is None and public is None:
        if options["jwt_algorithms"] or options["jwt-audience"] or options["jwt-issuer"]:
            raise ValueError("JWT options need --jwt-secret or --jwt-public-key")
        return None
    if secret is not None:
        key = _read_key(secret, "--jwt-secret").strip()
        default = ["HS256"]
    else:
        key = _read_key(public, "--jwt-public-key")
        default = ["RS256"]
    return JWTAuthenticator(
        key,
        options["jwt_algorithms"] or default,
        audience=options["jwt-audience"],
        issuer=options["jwt-issuer"],
        leeway=options["jwt-leeway"],
    )


def security_options_from(options: Options) -> SecurityOptions:
    if options["require-auth"] and options["optional-auth"]:
        raise ValueError("--require-auth and --optional-auth contradict each other")
    authenticator = jwt_authenticator_from(options)
    require: bool | None = None
    if options["require-auth"]:
        if authenticator is None:
            raise ValueError("--require-auth needs --jwt-secret or --jwt-public-key")
        require = True
    elif options["optional-auth"]:
        if authenticator is None:
            raise ValueError("--optional-auth needs --jwt-secret or --jwt-public-key")
        require = False
    return SecurityOptions(
        allowed_origins=tuple(options["allowed_origins"]),
        allow_null_origin=bool(options["allow-null-origin"]),
        authenticator=authenticator,
        require_auth=require,
        token_in_query=bool(options["allow-query-token"]),
        allow_ips=tuple(options["allow_ips"]),
        deny_ips=tuple(options["deny_ips"]),
        trusted_proxies=options["trusted-proxies"],
        max_connections=options["max-connections"],
        max_connections_per_ip=options["max-connections-per-ip"],
        connection_rate=options["connection-rate"],
        connection_burst=options["connection-burst"],
        message_rate=options["message-rate"],
        message_burst=options["message-burst"],
        upgrade_timeout=options["handshake-timeout"],
        max_outbound_buffer=options["max-outbound-buffer"],
        slow_consumer_grace=options["slow-consumer-grace"],
        compression=bool(options["compression"]),
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
    if options.get("mock_scenario") is not None:  # Mock server (docs/mock.md)
        from warpsocket.mock.options import mock_service

        return mock_service(options)
    hub = Hub(options["hub_options"], backend=options.get("backend"))
    app = options.get("app_callable")
    if app is not None:
        app(hub)
    service = WarpSocketService(hub, options["endpoints"], path=options["path"])
    if options.get("api_keys"):
        rate = options["api-rate"] or None
        add_http_api(service.site, hub, options["api_keys"], rate=rate, burst=options["api-burst"])
    if options["demo"]:  # the live demo
        add_demo(service.site)
        Logger().warn(
            "--demo: live demo at /demo, rooms open to every client; allowed origins: {origins}",
            origins=" ".join(options["allowed_origins"]) or "none",
        )
    if options["metrics-endpoint"] is not None:
        remove_metrics(service.site)
        endpoint = serverFromString(service.reactor, options["metrics-endpoint"])
        EndpointListener(endpoint, build_metrics_site(hub)).setServiceParent(service)
    if service.tls:
        ReloadOnHangup(service).setServiceParent(service)
    # Observability (docs/observability.md).
    if options.get("inspect_key") is not None:
        add_inspector(service.site, hub, options["inspect_key"])
    if options["log-format"] == "json":
        use_for_twistd(service, log_observer("json", sys.stdout, bool(options["debug"])))
    return service


class ReloadOnHangup(Service):
    """SIGHUP reloads the certificates of every ``ssl:`` endpoint (tls_reload.py)."""

    def __init__(self, server: WarpSocketService) -> None:
        self.server = server
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        reactor = self.server.reactor
        self._previous = signal.signal(
            signal.SIGHUP, lambda signum, frame: reactor.callFromThread(self.server.reload_tls)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
