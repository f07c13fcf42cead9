"""The names of a cluster's Redis keys and channels, all under one prefix."""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str, *, cluster: bool = False) -> None:
        self.prefix = prefix
        # Redis Cluster: a stream's hash, list and channel share its name as a
        # hash tag, so they live in one slot (a script touches them together).
        self.cluster = cluster
        # Every node's client acknowledgements, for the nodes that sent the messages.
        self.acks = f"{prefix}acks"
        # Presence and user lookups skip entries whose node or session key is gone.
        self.nodes = f"{prefix}node:"
        self.sessions = f"{prefix}session:"

    def channel(self, key: str) -> str:
        """The pub/sub channel a stream's appends are published on."""
        return f"{self.prefix}c:{{{key}}}" if self.cluster else f"{self.prefix}c:{key}"

    def meta(self, key: str) -> str:
        """A stream's hash: ``epoch`` and ``last`` offset."""
        return f"{self.prefix}s:{{{key}}}" if self.cluster else f"{self.prefix}s:{key}"

    def history(self, key: str) -> str:
        """A stream's history: ``offset|appended_at_ms|json`` entries."""
        return f"{self.prefix}l:{{{key}}}" if self.cluster else f"{self.prefix}l:{key}"

    def node(self, node: str) -> str:
        """A node's liveness key."""
        return f"{self.nodes}{node}"

    def canary(self, node: str) -> str:
        return f"{self.prefix}canary:{node}"

    def session(self, session_id: str) -> str:
        return f"{self.sessions}{session_id}"

    def user(self, user: str) -> str:
        """The set of a user's session ids."""
        return f"{self.prefix}user:{user}"

    def dedup(self, principal: str, message_id: str) -> str:
        return f"{self.prefix}dedup:{principal}:{message_id}"

    def presence(self, room: str) -> str:
        """A room's present sessions, each with the node it is on."""
        return f"{self.prefix}presence:{room}"
