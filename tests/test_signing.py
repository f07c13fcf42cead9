"""Signatures and replay protection: the vectors of tests/vectors/crypto.json
and the replay guard (protocol.md "Extension: signatures"). Over real
sockets: tests/test_signing_wire.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from warpsocket.crypto.replay import ReplayGuard
from warpsocket.crypto.signing import (
    Ed25519Key,
    HmacKey,
    SignatureError,
    SignatureKeys,
    sign_wire,
    signing_input,
)
from warpsocket.protocol.codes import ErrorCode

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "crypto.json").read_text("utf-8")
)


def vector_keys() -> SignatureKeys:
    keys = VECTORS["keys"]
    hmac_key = HmacKey(keys["hmac"]["kid"], bytes.fromhex(keys["hmac"]["secret"]))
    ed = Ed25519Key.from_seed(keys["ed25519"]["kid"], bytes.fromhex(keys["ed25519"]["seed"]))
    return SignatureKeys.of([hmac_key, ed])


def verify_only_keys() -> SignatureKeys:
    keys = VECTORS["keys"]
    hmac_key = HmacKey(keys["hmac"]["kid"], bytes.fromhex(keys["hmac"]["secret"]))
    ed = Ed25519Key.from_public(keys["ed25519"]["kid"], bytes.fromhex(keys["ed25519"]["public"]))
    return SignatureKeys.of([hmac_key, ed])


class SignatureVectorTests(unittest.TestCase):
    def test_signing_input_and_signature(self) -> None:
        keys = vector_keys()
        for case in VECTORS["sign"]:
            with self.subTest(case["name"]):
                key = keys.keys[case["kid"]]
                self.assertEqual(
                    signing_input(case["envelope"], case["alg"], case["kid"]).decode(),
                    case["signing_input"],
                )
                self.assertEqual(sign_wire(case["envelope"], key)["sig"], case["sig"])

    def test_public_keys_verify(self) -> None:
        keys = verify_only_keys()
        for case in VECTORS["sign"]:
            with self.subTest(case["name"]):
                wire = {**case["envelope"], "sig": case["sig"]}
                self.assertEqual(keys.verify(wire), case["kid"])

    def test_failures_have_their_codes(self) -> None:
        keys = verify_only_keys()
        for case in VECTORS["verify_fail"]:
            with self.subTest(case["name"]), self.assertRaises(SignatureError) as caught:
                keys.verify(case["envelope"])
            self.assertEqual(int(caught.exception.code), case["code"])

    def test_ed25519_public_key_matches_the_seed(self) -> None:
        # RFC 8032 section 7.1, test 1.
        self.assertEqual(
            VECTORS["keys"]["ed25519"]["public"],
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        )

    def test_a_public_key_cannot_sign(self) -> None:
        with self.assertRaises(ValueError):
            SignatureKeys(verify_only_keys().keys, signer="ed-1")

    def test_short_hmac_secrets_are_refused(self) -> None:
        with self.assertRaises(ValueError):
            HmacKey("k", b"too short")


class ReplayGuardTests(unittest.TestCase):
    def test_window_and_repeats(self) -> None:
        guard = ReplayGuard(window_ms=1_000)
        now = 1_000_000
        self.assertIsNone(guard.check("k", "a", now, now))
        self.assertIs(guard.check("k", "a", now, now + 10), ErrorCode.REPLAYED)
        # Same id, new timestamp (a client's retry, re-stamped): not a replay.
        self.assertIsNone(guard.check("k", "a", now + 5, now + 10))
        # Another key id's envelope with the same id: not a replay either.
        self.assertIsNone(guard.check("k2", "a", now, now + 10))
        self.assertIs(guard.check("k", "b", now - 1_001, now), ErrorCode.STALE)
        self.assertIs(guard.check("k", "c", now + 1_001, now), ErrorCode.STALE)

    def test_entries_leave_with_the_window(self) -> None:
        guard = ReplayGuard(window_ms=1_000)
        guard.check("k", "a", 0, 0)
        self.assertEqual(len(guard), 1)
        # Once outside the window the entry is gone, and the replay is stale.
        self.assertIs(guard.check("k", "a", 0, 1_001), ErrorCode.STALE)
        self.assertEqual(len(guard), 0)

    def test_bounded_memory_never_accepts_a_forgotten_replay(self) -> None:
        guard = ReplayGuard(window_ms=60_000, max_entries=3)
        for offset, ident in enumerate("abcd"):
            self.assertIsNone(guard.check("k", ident, 1_000 + offset, 2_000))
        self.assertEqual(len(guard), 3)
        # "a" was forgotten to stay within bounds: its replay is refused as
        # stale (the window's edge moved over it), never accepted.
        self.assertIs(guard.check("k", "a", 1_000, 2_000), ErrorCode.STALE)
        self.assertIs(guard.check("k", "b", 1_001, 2_000), ErrorCode.REPLAYED)
        self.assertIsNone(guard.check("k", "e", 1_500, 2_000))


class KeyFileTests(unittest.TestCase):
    """``warpsocket serve --sign-key-file`` and its companions."""

    def write(self, content: Any) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(content if isinstance(content, str) else json.dumps(content))
        return path

    def test_a_key_file_gives_the_servers_options(self) -> None:
        from warpsocket.server.cli import Options

        keys = VECTORS["keys"]
        path = self.write(
            {
                "signer": "ed-1",
                "keys": [
                    {"kid": "h-1", "alg": "hmac-sha256", "secret": keys["hmac"]["secret"]},
                    {"kid": "ed-1", "alg": "ed25519", "seed": keys["ed25519"]["seed"]},
                    {"kid": "pub", "alg": "ed25519", "public": keys["ed25519"]["public"]},
                ],
            }
        )
        options = Options()
        options.parseOptions(
            [
                "--sign-key-file",
                path,
                "--sign-window",
                "60",
                "--sign-max-ids",
                "10",
                "--sign-required",
            ]
        )
        signing = options["hub_options"].signing
        self.assertEqual(sorted(signing.keys.keys), ["ed-1", "h-1", "pub"])
        self.assertEqual(signing.keys.signer, "ed-1")
        self.assertEqual(
            (signing.window_ms, signing.max_entries, signing.required), (60_000, 10, True)
        )
        self.assertEqual(signing.parameters["algs"], ["ed25519", "hmac-sha256"])
        # Secrets stay out of reprs (and so out of logs).
        self.assertNotIn(keys["hmac"]["secret"], repr(signing))
        self.assertNotIn("warpsocket-test-hmac", repr(signing))

    def test_bad_files_and_options_are_refused_with_a_reason(self) -> None:
        from twisted.python.usage import UsageError

        from warpsocket.server.cli import Options

        bad: list[Any] = [
            "not json",
            {"keys": []},
            {"keys": [{"kid": "k", "alg": "hmac-sha256", "secret": "00"}]},
            {"keys": [{"kid": "k", "alg": "rsa", "secret": "00" * 32}]},
            {"keys": [{"kid": "k", "alg": "ed25519", "seed": "00" * 31}]},
            {"signer": "pub", "keys": [{"kid": "pub", "alg": "ed25519", "public": "00" * 32}]},
            {"keys": [{"kid": "k", "alg": "hmac-sha256", "secret": "00" * 32}] * 2},
        ]
        for content in bad:
            with self.subTest(repr(content)), self.assertRaises(UsageError):
                Options().parseOptions(["--sign-key-file", self.write(content)])
        with self.assertRaises(UsageError):
            Options().parseOptions(["--sign-required"])
        plain = Options()
        plain.parseOptions([])
        self.assertIsNone(plain["hub_options"].signing)
