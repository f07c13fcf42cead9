"""The reliability core: streams, sessions, acks, retries and dedup. Sans-I/O.

Nothing here imports twisted, autobahn or time: every call takes ``now`` (ms)
and returns what to send; the adapters in ``warpsocket.server`` and
``warpsocket.client`` do the I/O.
"""
