"""The runnable examples of docs/client.md, each in a child process against a real server.

Each example is a ``python`` block right after an ``<!-- example -->`` line;
the ``text`` block that follows it is what it must print. The URL in the
examples is replaced by the test server's.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.helpers.client import ServerFixture, make_hub
from warpsocket.examples.chat import setup
from warpsocket.transfer.server import TransferOptions, TransferServer

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "client.md"
EXAMPLE = re.compile(
    r"<!-- example -->\n```python\n(?P<code>.*?)```\n.*?```text\n(?P<output>.*?)```", re.S
)
DOCUMENTED_URL = "ws://127.0.0.1:8080/ws"


def examples() -> list[tuple[str, str]]:
    found = [(m["code"], m["output"]) for m in EXAMPLE.finditer(GUIDE.read_text("utf-8"))]
    if not found:
        raise AssertionError("no examples found in docs/client.md")
    return found


class GuideExampleTests(unittest.TestCase):
    timeout = 60

    def test_everyExampleIsFound(self) -> None:
        self.assertEqual(len(examples()), 8)

    @inlineCallbacks
    def run_example(self, index: int) -> Any:
        code, expected = examples()[index]
        self.assertIn(DOCUMENTED_URL, code)
        hub = make_hub()
        setup(hub)
        transfers = TransferServer(hub, TransferOptions(chunk_size=65536))
        self.addCleanup(transfers.stop)
        server = ServerFixture(self, hub)
        out, err, status = yield getProcessOutputAndValue(
            sys.executable, ["-c", code.replace(DOCUMENTED_URL, server.url)], env=os.environ
        )
        self.assertEqual(status, 0, err.decode(errors="replace"))
        self.assertEqual(out.decode(), expected)

    def test_twisted(self) -> Any:
        return self.run_example(0)

    def test_asyncio(self) -> Any:
        return self.run_example(1)

    def test_blocking(self) -> Any:
        return self.run_example(2)

    def test_outcomes(self) -> Any:
        return self.run_example(3)

    def test_encryption(self) -> Any:
        return self.run_example(4)

    def test_transfers(self) -> Any:
        return self.run_example(5)

    def test_pool(self) -> Any:
        return self.run_example(6)

    def test_batches(self) -> Any:
        return self.run_example(7)
