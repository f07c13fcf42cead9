"""The Redis backend: many nodes act as one (docs/cluster.md).

- Streams live in Redis: a hash ``<p>s:<key>`` (``epoch``, ``last``) and a
  list ``<p>l:<key>`` of ``offset|appended_at_ms|json``, appended atomically
  by a Lua script that also publishes ``epoch|entry`` on ``<p>c:<key>``.
- Each node mirrors the streams its local sessions read (``RedisStreamStore``)
  and delivers to its local members from pub/sub, in offset order; a gap, an
  epoch change or a subscriber reconnect is healed from a snapshot first.
- Sessions, shared dedup records, presence and node liveness are plain keys.
- Health is proven by a canary: a nonce published through Redis must come
  back on this node's own subscriber in time.

Modules, each with one job; none imports ``backend``, which composes them:
``scripts`` (Lua), ``options`` (options and URLs), ``keys`` (key names),
``connection`` (txredisapi glue, reconnection, Sentinel), ``mirror`` and
``streams`` (mirrors, snapshots, pub/sub, publish), ``sessions``, ``dedup``,
``presence``, ``acks`` (acknowledgement notices).
"""

from warpsocket.backends.redis.backend import RedisBackend, redis_backend_from_options
from warpsocket.backends.redis.options import RedisAddress, RedisOptions, parse_redis_url
from warpsocket.backends.redis.scripts import CLAIM_TTL_MS
from warpsocket.backends.redis.streams import RedisStreamStore

__all__ = [
    "CLAIM_TTL_MS",
    "RedisAddress",
    "RedisBackend",
    "RedisOptions",
    "RedisStreamStore",
    "parse_redis_url",
    "redis_backend_from_options",
]
