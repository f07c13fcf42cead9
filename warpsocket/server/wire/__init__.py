"""The frame path of an open connection: framing, write batches, the fast path (fastpath.py)."""
