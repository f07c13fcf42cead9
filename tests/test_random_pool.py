"""``RandomPool`` (warpsocket/core/ids.py): the kernel's random bytes read a
block at a time, each byte handed out once, in threads and across ``fork``."""

from __future__ import annotations

import itertools
import os
import re
import threading

from twisted.trial import unittest

from warpsocket.core.ids import RANDOM, RandomPool, random_id, random_token


class CountingSource:
    """Blocks of distinct bytes (a counter), and the requests made."""

    def __init__(self) -> None:
        self.requests: list[int] = []
        self.handed: list[bytes] = []
        self._counter = itertools.count()

    def __call__(self, size: int) -> bytes:
        self.requests.append(size)
        block = b"".join(next(self._counter).to_bytes(4, "big") for _ in range(size // 4 + 1))
        self.handed.append(block[:size])
        return block[:size]


class RandomPoolTests(unittest.TestCase):
    def test_one_read_per_block_and_the_bytes_in_order(self) -> None:
        source = CountingSource()
        pool = RandomPool(block=64, source=source)
        drawn = [pool(16) for _ in range(4)]
        self.assertEqual(source.requests, [64])
        self.assertEqual(b"".join(drawn), source.handed[0])

    def test_a_draw_that_does_not_fit_starts_a_new_block(self) -> None:
        source = CountingSource()
        pool = RandomPool(block=64, source=source)
        first, second = pool(40), pool(40)
        self.assertEqual(source.requests, [64, 64])
        self.assertEqual(first, source.handed[0][:40])
        self.assertEqual(second, source.handed[1][:40])

    def test_a_draw_larger_than_a_block_goes_to_the_kernel(self) -> None:
        source = CountingSource()
        pool = RandomPool(block=64, source=source)
        self.assertEqual(len(pool(100)), 100)
        self.assertEqual(source.requests, [100])

    def test_threads_never_get_the_same_bytes(self) -> None:
        pool = RandomPool(block=256, source=CountingSource())
        drawn: list[bytes] = []
        lock = threading.Lock()

        def draw() -> None:
            mine = [pool(16) for _ in range(2000)]
            with lock:
                drawn.extend(mine)

        threads = [threading.Thread(target=draw) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(len(drawn), 16_000)
        self.assertEqual(len(set(drawn)), 16_000)

    def test_a_forked_child_does_not_repeat_its_parents_bytes(self) -> None:
        RANDOM(16)  # the parent's pool holds unread bytes now
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its next bytes, then out at once
            try:
                os.write(writer, RANDOM(16))
            finally:
                os._exit(0)
        os.close(writer)
        child = os.read(reader, 16)
        os.close(reader)
        os.waitpid(pid, 0)
        self.assertEqual(len(child), 16)
        self.assertNotEqual(child, RANDOM(16))

    def test_ids_and_tokens(self) -> None:
        ids = {random_id() for _ in range(1000)}
        self.assertEqual(len(ids), 1000)
        self.assertTrue(all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in ids))
        token = random_token(32)
        self.assertRegex(token, r"^[A-Za-z0-9_-]{43}$")
        self.assertNotEqual(token, random_token(32))
