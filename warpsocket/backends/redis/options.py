"""Where Redis is and how a node talks to it: options and ``redis://`` URLs."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass


@dataclass(frozen=True)
class RedisOptions:
    """Where Redis is and how this node talks to it.

    Either ``url`` (``redis://[:password@]host:port/db``, ``rediss://`` for
    TLS), ``sentinels`` (``host:port`` addresses) with ``service``, or
    ``cluster`` (``host:port`` of some Redis Cluster nodes: the rest are found).
    """

    url: str | None = "redis://127.0.0.1:6379/0"
    sentinels: tuple[str, ...] = ()
    cluster: tuple[str, ...] = ()  # Redis Cluster seed nodes
    service: str = "mymaster"
    prefix: str = "warpsocket:"
    password: str | None = None  # for sentinel setups (the URL carries its own)
    db: int | None = None
    connect_timeout: float = 3.0
    reply_timeout: float = 5.0
    reconnect_delay: float = 0.1
    max_reconnect_delay: float = 2.0
    canary_interval: float = 1.0
    canary_timeout: float = 3.0
    prepare_timeout: float = 5.0
    node_ttl_ms: int = 15_000

    def __post_init__(self) -> None:
        if not self.url and not self.sentinels and not self.cluster:
            raise ValueError("give a Redis URL, at least one sentinel or cluster node")
        if sum(bool(x) for x in (self.url, self.sentinels, self.cluster)) > 1:
            raise ValueError("give one of a Redis URL, sentinels or cluster nodes")
        if self.url:
            parse_redis_url(self.url)
        for address in (*self.sentinels, *self.cluster):
            host_port(address)
        for name in ("connect_timeout", "reply_timeout", "canary_interval", "canary_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    db: int
    password: str | None
    tls: bool


def parse_redis_url(url: str) -> RedisAddress:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
    path = parsed.path.strip("/")
    try:
        db = int(path) if path else 0
        port = parsed.port or 6379
    except ValueError as exc:
        raise ValueError(f"bad Redis URL {url!r}: {exc}") from None
    password = urllib.parse.unquote(parsed.password) if parsed.password else None
    host = parsed.hostname or "127.0.0.1"
    return RedisAddress(host, port, db, password, parsed.scheme == "rediss")


def host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    return host, int(port)
