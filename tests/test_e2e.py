"""End-to-end encryption: the vectors of tests/vectors/crypto.json, the
canonical form, key rings and rotation (protocol.md "Extension: end-to-end
encryption"). Over real sockets: tests/test_e2e_wire.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from warpsocket.crypto import e2e
from warpsocket.crypto.canonical import (
    CanonicalError,
    b64url,
    b64url_decode,
    canonical_json,
)
from warpsocket.protocol.codes import ErrorCode

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "crypto.json").read_text("utf-8")
)


class CanonicalFormTests(unittest.TestCase):
    def test_vectors(self) -> None:
        for case in VECTORS["canonical"]:
            with self.subTest(case["name"]):
                self.assertEqual(canonical_json(case["value"]).decode(), case["canonical"])

    def test_integers_and_integral_floats_are_one_form(self) -> None:
        # A JavaScript peer cannot tell 3 from 3.0: neither may the canonical form.
        self.assertEqual(canonical_json({"n": 3.0}), canonical_json({"n": 3}))

    def test_values_outside_the_data_model_are_refused(self) -> None:
        for bad in (float("nan"), float("inf"), b"bytes", {1: 2}, object()):
            with self.subTest(repr(bad)), self.assertRaises(CanonicalError):
                canonical_json(bad)

    def test_base64url_is_strict(self) -> None:
        self.assertEqual(b64url_decode(b64url(b"\x00\xff\x10")), b"\x00\xff\x10")
        for bad in ("AB=", "A", "a+b/", "AB", None, 5):
            with self.subTest(bad):
                # "AB" has non-zero trailing bits: not the canonical text of any bytes.
                self.assertIsNone(b64url_decode(bad))


class VectorProvider:
    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = {kid: bytes.fromhex(key) for kid, key in keys.items()}

    def sending_key(self, scope: str) -> tuple[str, bytes] | None:
        return None

    def receiving_key(self, scope: str, kid: str) -> bytes | None:
        return self.keys.get(kid)


class EncryptionVectorTests(unittest.TestCase):
    def test_seal_gives_the_expected_ciphertext(self) -> None:
        for case in VECTORS["encrypt"]:
            with self.subTest(case["name"]):
                key, nonce = bytes.fromhex(case["key"]), bytes.fromhex(case["nonce"])
                aad = e2e.associated_data(case["kid"], case["event"], case["scope"])
                self.assertEqual(aad.decode(), case["aad"])
                self.assertEqual(
                    canonical_json(case["plaintext"]).decode(), case["plaintext_bytes"]
                )
                sealed = e2e.seal(
                    case["plaintext"], case["kid"], key, case["event"], case["scope"], nonce
                )
                self.assertEqual(sealed, case["sealed"])

    def test_open_gives_the_plaintext(self) -> None:
        for case in VECTORS["encrypt"]:
            with self.subTest(case["name"]):
                provider = VectorProvider({case["kid"]: case["key"]})
                plain = e2e.open_sealed(case["sealed"], provider, case["event"], case["scope"])
                self.assertEqual(plain, case["plaintext"])

    def test_failures_have_their_codes(self) -> None:
        for case in VECTORS["decrypt_fail"]:
            with self.subTest(case["name"]):
                provider = VectorProvider(case["keys"])
                with self.assertRaises(e2e.E2EError) as caught:
                    e2e.open_sealed(case["sealed"], provider, case["event"], case["scope"])
                self.assertEqual(int(caught.exception.code), case["code"])

    def test_hostile_shapes_are_refused_not_crashed(self) -> None:
        provider = VectorProvider({"k": "00" * 32})
        shapes: list[Any] = [
            None,
            {"$enc": None},
            {"$enc": []},
            {"$enc": {"alg": "A256GCM", "kid": 5, "nonce": "AAAA", "ct": "AAAA"}},
            {"$enc": {"alg": "A256GCM", "kid": "k", "nonce": "A" * 16, "ct": "short"}},
            {"$enc": {"alg": "A256GCM", "kid": "k" * 65, "nonce": "A" * 16, "ct": "A" * 40}},
        ]
        for shape in shapes:
            with self.subTest(repr(shape)), self.assertRaises(e2e.E2EError) as caught:
                e2e.open_sealed(shape, provider, "say", "direct")
            self.assertEqual(caught.exception.code, ErrorCode.DECRYPT_FAILED)

    def test_authentic_plaintext_outside_the_data_model_is_refused(self) -> None:
        # A sender (with the key) that seals bytes that are no JSON value.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key, nonce = bytes(32), bytes(12)
        ct = AESGCM(key).encrypt(nonce, b"NaN", e2e.associated_data("k", "say", "direct"))
        sealed = {"$enc": {"alg": "A256GCM", "kid": "k", "nonce": b64url(nonce), "ct": b64url(ct)}}
        with self.assertRaises(e2e.E2EError) as caught:
            e2e.open_sealed(sealed, VectorProvider({"k": "00" * 32}), "say", "direct")
        self.assertEqual(caught.exception.code, ErrorCode.DECRYPT_FAILED)


class KeyProviderTests(unittest.TestCase):
    def test_rotation_seals_with_the_new_key_and_opens_both(self) -> None:
        ring = e2e.KeyRing({"k1": bytes(32)}, current="k1")
        old = e2e.seal(1, *ring.sending_key("direct") or ("", b""), "e", "direct")  # type: ignore[misc]
        ring.add("k2", bytes(range(32)))
        ring.use("k2")
        kid, key = ring.sending_key("direct") or ("", b"")
        self.assertEqual(kid, "k2")
        new = e2e.seal(2, kid, key, "e", "direct")
        self.assertEqual(e2e.open_sealed(old, ring, "e", "direct"), 1)
        self.assertEqual(e2e.open_sealed(new, ring, "e", "direct"), 2)
        ring.remove("k1")
        with self.assertRaises(e2e.E2EError) as caught:
            e2e.open_sealed(old, ring, "e", "direct")
        self.assertEqual(caught.exception.code, ErrorCode.UNKNOWN_KEY)

    def test_scoped_keys_give_each_room_its_ring(self) -> None:
        chat = e2e.KeyRing({"c": bytes(32)}, current="c")
        keys = e2e.ScopedKeys({"room:chat": chat})
        self.assertEqual(keys.sending_key("room:chat"), ("c", bytes(32)))
        self.assertIsNone(keys.sending_key("room:other"))
        self.assertIsNone(keys.receiving_key("room:other", "c"))

    def test_bad_keys_are_refused(self) -> None:
        with self.assertRaises(ValueError):
            e2e.KeyRing({"k": b"short"})
        with self.assertRaises(ValueError):
            e2e.KeyRing({"": bytes(32)})
        with self.assertRaises(ValueError):
            e2e.KeyRing({"k": bytes(32)}, current="other")

    def test_nonces_are_fresh(self) -> None:
        nonces = {e2e.seal(1, "k", bytes(32), "e", "direct")["$enc"]["nonce"] for _ in range(50)}
        self.assertEqual(len(nonces), 50)

    def test_scope_of(self) -> None:
        self.assertEqual(e2e.scope_of(room="chat"), "room:chat")
        self.assertEqual(e2e.scope_of(stream="broadcast"), "broadcast")
        self.assertEqual(e2e.scope_of(), "direct")
