"""The Lua scripts that keep the cluster's records atomic, and their constants.

Streams are a hash ``<p>s:<key>`` (``epoch``, ``last``) and a list
``<p>l:<key>`` of ``offset|appended_at_ms|json``; the scripts that append,
snapshot, claim and look up run in Redis so that no other node sees half a step.
"""

from __future__ import annotations

PUBLISH_SCRIPT = """
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = redis.call('HINCRBY', KEYS[1], 'last', 1)
local entry = offset .. '|' .. ARGV[2] .. '|' .. ARGV[3]
redis.call('RPUSH', KEYS[2], entry)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PUBLISH', ARGV[6], epoch .. '|' .. entry)
return {offset, epoch}
"""

# Redis Cluster: the channel is KEYS[3] (in the stream's slot) and the publish
# is sharded, heard only on the stream's shard.
PUBLISH_SCRIPT_SHARDED = PUBLISH_SCRIPT.replace(
    "redis.call('PUBLISH', ARGV[6],", "redis.call('SPUBLISH', KEYS[3],"
)

SNAPSHOT_SCRIPT = """
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local last = redis.call('HGET', KEYS[1], 'last') or '0'
return {epoch, last, redis.call('LRANGE', KEYS[2], 0, -1)}
"""

# A claim is an empty value that lives only CLAIM_TTL_MS: if the claiming node
# dies before it records the reply, a retry is handled after that, instead of
# being answered by nobody for the whole dedup age. The reply, once recorded,
# lives the dedup age.
CLAIM_TTL_MS = 10_000

CLAIM_SCRIPT = """
if redis.call('SET', KEYS[1], '', 'NX', 'PX', ARGV[1]) then return {1} end
return {0, redis.call('GET', KEYS[1])}
"""

# One reactor turn's dedup work in one call, on a Redis Cluster or a Redis
# before 7.0 (one Redis 7 gets plain SET commands; docs/cluster.md, "Shared dedup"):
# KEYS[1..n] are recorded (ARGV[3 + i] their replies, for the dedup age
# ARGV[2]), then KEYS[n+1..] are claimed (an empty value for ARGV[1] ms).
# Records first: a claim of an id recorded in the same turn sees its reply.
# Each claim answers 1 (claimed here) or '=' .. the value already there.
DEDUP_BATCH_SCRIPT = """
local n = tonumber(ARGV[3])
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[3 + i], 'PX', ARGV[2])
end
local out = {}
for i = n + 1, #KEYS do
  if redis.call('SET', KEYS[i], '', 'NX', 'PX', ARGV[1]) then
    out[#out + 1] = 1
  else
    out[#out + 1] = '=' .. (redis.call('GET', KEYS[i]) or '')
  end
end
return out
"""

# A session record saved while Redis was unreachable: written unless the one
# in Redis was saved later (the session moved to a node that could reach it).
SESSION_IF_NEWER_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, record = pcall(cjson.decode, current)
  if ok and type(record) == 'table' and tonumber(record['saved_at'] or 0) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""

UNCLAIM_SCRIPT = """
if redis.call('GET', KEYS[1]) == '' then return redis.call('DEL', KEYS[1]) end
return 0
"""

UNSET_PRESENCE_SCRIPT = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# Sessions in a room whose node is alive; entries of dead nodes are removed.
PRESENCE_SCRIPT = """
local all = redis.call('HGETALL', KEYS[1])
local live = {}
local alive = {}
for i = 1, #all, 2 do
  local node = all[i + 1]
  if alive[node] == nil then
    alive[node] = redis.call('EXISTS', ARGV[1] .. node) == 1
  end
  if alive[node] then table.insert(live, all[i])
  else redis.call('HDEL', KEYS[1], all[i]) end
end
return live
"""

USER_SESSIONS_SCRIPT = """
local ids = redis.call('SMEMBERS', KEYS[1])
local live = {}
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then table.insert(live, id)
  else redis.call('SREM', KEYS[1], id) end
end
return live
"""

# How long a stream's hash (its epoch and last offset) lives after it was last used.
STREAM_META_TTL_MS = 7 * 24 * 3600 * 1000
