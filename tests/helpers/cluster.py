"""Shared by the cluster test modules: nodes (Hub + service on Redis) and their fixture."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import TimerService
from twisted.internet import reactor as _reactor
from twisted.trial import unittest

from tests.redis_harness import RedisClusterSetup, RedisProcess
from tests.wsclient import WsClient, connect, wait_until
from warpsocket.backends.redis import RedisBackend, RedisOptions
from warpsocket.core.history import HistoryLimits
from warpsocket.core.server import CoreOptions
from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.security.config import SecurityOptions
from warpsocket.server.service import WarpSocketService

reactor: Any = _reactor


def events(client: WsClient, stream: str) -> list[Any]:
    return [
        m["data"] for m in client.messages if m.get("type") == "event" and m.get("stream") == stream
    ]


class Node:
    def __init__(
        self, name: str, options: RedisOptions, security: SecurityOptions | None = None
    ) -> None:
        self.backend = RedisBackend(options, HistoryLimits(), node=name)
        hub_options = HubOptions(
            core=CoreOptions(node=name),
            open_rooms=True,
            shutdown_timeout=1.0,
            security=security if security is not None else SecurityOptions(),
        )
        self.hub = Hub(hub_options, clock=reactor, backend=self.backend)
        # A node here is not a process: ``kill`` cannot take a frozen heap or
        # a raised threshold (server/heap.py) with it, so these nodes leave
        # the collector alone.
        self.service = WarpSocketService(
            self.hub, ["tcp:0:interface=127.0.0.1"], freeze_heap=False, young_gc_threshold=None
        )
        self.service.startService()
        self.port = self.service.ports[0].getHost().port

    def kill(self) -> None:
        """Abrupt death: connections aborted, no more listening, Redis links cut."""
        for listener in self.service.listeners:
            if listener.port is not None:
                listener.port.stopListening()
                listener.port = None
        self.hub.port.abort_all()
        self.backend.stop()
        for child in list(self.service):
            if isinstance(child, TimerService):
                child.stopService()
        self.hub.port.timers.stop()  # the connection timers (server/timers.py)
        self.service.running = False

    async def stop(self) -> None:
        if self.service.running:
            await self.service.stopService()


class ClusterCase(unittest.TestCase):
    """Nodes on one Redis; a subclass with ``redis_cluster = True`` runs the same
    tests on a Redis Cluster of three masters (``start_redis`` returns it)."""

    timeout = 60
    redis_cluster = False

    def setUp(self) -> None:
        self.nodes: list[Node] = []
        self.clients: list[WsClient] = []

    def start_redis(self) -> Any:
        """A ``RedisProcess``, or a ``RedisClusterSetup`` (the same surface)."""
        if self.redis_cluster:
            cluster = RedisClusterSetup()
            self.addCleanup(cluster.cleanup)
            self.seeds = cluster.seeds
            return cluster
        redis = RedisProcess().start()
        self.addCleanup(redis.cleanup)
        self.url = f"redis://127.0.0.1:{redis.port}/0"
        return redis

    def redis_options(self, prefix: str = "t:") -> RedisOptions:
        """Where the nodes of this test find Redis: the URL, or the cluster's seeds."""
        if self.redis_cluster:
            return RedisOptions(url=None, cluster=self.seeds, prefix=prefix)
        return RedisOptions(url=self.url, prefix=prefix)

    def node(
        self,
        name: str,
        options: RedisOptions | None = None,
        security: SecurityOptions | None = None,
    ) -> Node:
        node = Node(name, options or self.redis_options(), security)
        self.nodes.append(node)
        self.addCleanup(node.stop)
        return node

    async def healthy(self, *nodes: Node, timeout: float = 15.0) -> None:
        await wait_until(lambda: all(n.hub.health is None for n in nodes), timeout, "healthy nodes")

    async def client(self, node: Node, **hello: Any) -> WsClient:
        client = await connect(node.port)
        self.clients.append(client)
        self.addCleanup(self._close, client)
        welcome = await client.hello(**hello)
        self.assertEqual(welcome["type"], "welcome", welcome)
        return client

    async def _close(self, client: WsClient) -> None:
        if client.opened.called and not client.closed.called:
            client.drop()
