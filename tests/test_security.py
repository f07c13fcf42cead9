"""Security and limits, over real sockets on 127.0.0.1 (docs/security.md).

Every refusal is checked for its exact code (an HTTP status and the
``<code> <name>`` reason phrase before the upgrade, a WebSocket close or
error code after it) and for the server staying healthy: counters back
where they were, and a well-behaved client still served. Token buckets,
token expiry, the upgrade deadline and the slow-consumer grace run on the
hub's ``Clock``; only the network runs on the real reactor.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import tracemalloc
import zlib
from typing import Any, cast

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.helpers.security import SECRET, SecureTestCase, frame, hs256, upgrade_request
from tests.wsclient import ConnectFailedError, async_test, connect, sleep, wait_until
from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.security import (
    AddressPolicy,
    AuthError,
    ClaimsPolicy,
    Identity,
    JWTAuthenticator,
    KeyedBuckets,
    OriginPolicy,
    SecurityOptions,
    StaticKeyAuthenticator,
    TokenBucket,
    forwarded_client,
)
from warpsocket.server.security.gate import Gate
from warpsocket.server.security.iplist import address_key, parse_address
from warpsocket.server.security.limits import buffered_bytes
from warpsocket.server.security.origin import parse_origin

MiB = 1_048_576


def _rsa() -> tuple[Any, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public


PRIVATE, PUBLIC = _rsa()
OTHER_PRIVATE, _ = _rsa()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A token built by hand: what an attacker sends (alg=none, key confusion)."""
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def rs256(key: Any = PRIVATE, **claims: Any) -> str:
    return jwt.encode(claims, key, algorithm="RS256")


def deflate_bomb(size: int) -> bytes:
    """``size`` bytes of text as one permessage-deflate payload (about size/1000)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = b"a" * MiB
    parts = [compressor.compress(chunk) for _ in range(size // MiB)]
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(parts)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


# ---------------------------------------------------------------- origins


class OriginTests(SecureTestCase):
    @async_test
    async def test_exact_allowlist_refuses_evil_null_and_near_misses(self) -> None:
        self.start_secure(SecurityOptions(allowed_origins=("https://app.example",)))
        for origin in (
            "https://evil.example",
            "null",
            "https://app.example:8443",  # another port
            "http://app.example",  # another scheme
            "https://app.example.evil.example",
        ):
            error = await self.refused(origin=origin)
            self.assertEqual((error.status, self.reason(error)), (403, "4103 origin_rejected"))
        self.assertEqual(
            self.metric("warpsocket_rejected_handshakes_total", {"reason": "origin_rejected"}), 5
        )
        # The exact origin (port 443 spelled or not) is served, and so are
        # non-browser clients when no authentication is configured.
        for origin in ("https://app.example", "https://APP.example:443", None):
            client = await self.open(origin=origin)
            self.assertEqual((await self.hello_with(client))["type"], "welcome")
        self.assertEqual(self.hub.connection_count, 3)
        self.assertEqual(self.gate.open_connections, 3)

    @async_test
    async def test_null_only_when_allowed_and_star_allows_any(self) -> None:
        self.start_secure(SecurityOptions(allowed_origins=("*", "null")))
        for origin in ("null", "https://anything.example:1234"):
            client = await self.open(origin=origin)
            self.assertEqual((await self.hello_with(client))["type"], "welcome")

    @async_test
    async def test_default_refuses_browsers_but_serves_the_quick_start(self) -> None:
        """No allowlist and no authentication: any browser origin is refused
        (cross-site pages cannot reach the server), clients without Origin
        (the Python client, curl) are served."""
        self.start_secure()
        error = await self.refused(origin="http://localhost:3000")
        self.assertEqual((error.status, self.reason(error)), (403, "4103 origin_rejected"))
        client = await self.open()
        self.assertEqual((await self.hello_with(client))["type"], "welcome")

    @async_test
    async def test_without_allowlist_required_tokens_admit_any_origin(self) -> None:
        self.start_secure(SecurityOptions(authenticator=JWTAuthenticator(SECRET, ["HS256"])))
        client = await self.open(origin="https://elsewhere.example")
        welcome = await self.hello_with(client, hs256(sub="ann", exp=60))
        self.assertEqual(welcome["type"], "welcome")
        self.assertEqual(
            await self.closed_after_hello(None, origin="https://elsewhere.example"), 4100
        )

    @async_test
    async def test_missing_origin_must_present_a_token(self) -> None:
        """Optional authentication: browsers from an allowed origin may stay
        anonymous; a client without Origin must authenticate."""
        self.start_secure(
            SecurityOptions(
                allowed_origins=("https://app.example",),
                authenticator=JWTAuthenticator(SECRET, ["HS256"]),
                require_auth=False,
            )
        )
        self.assertEqual(await self.closed_after_hello(None), 4100)
        self.assertEqual(self.metric("warpsocket_auth_total", {"outcome": "missing"}), 1)
        browser = await self.open(origin="https://app.example")
        self.assertEqual((await self.hello_with(browser))["type"], "welcome")
        self.assertIsNone((await self.whoami(browser))["user"])
        tool = await self.open()
        self.assertEqual((await self.hello_with(tool, hs256(sub="bot", exp=60)))["type"], "welcome")
        self.assertEqual((await self.whoami(tool))["user"], "bot")
        await wait_until(lambda: self.hub.connection_count == 2, what="refused one detached")


# ---------------------------------------------------------------- JWT


class JWTTests(SecureTestCase):
    AUD = "warpsocket"
    ISS = "https://issuer.example"

    def start_rs256(self, **security: Any) -> Hub:
        authenticator = JWTAuthenticator(
            PUBLIC, ["RS256"], audience=self.AUD, issuer=self.ISS, leeway=5
        )
        hub = self.start_secure(SecurityOptions(authenticator=authenticator, **security))
        self.clock.advance(1_000)  # tokens below are relative to t = 1000
        return hub

    def claims(self, **overrides: Any) -> dict[str, Any]:
        claims: dict[str, Any] = {"sub": "alice", "aud": self.AUD, "iss": self.ISS, "exp": 1_600}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    @async_test
    async def test_refusal_matrix(self) -> None:
        self.start_rs256()
        base = self.claims()
        cases: list[tuple[str, Any, int, str]] = [
            ("alg none", forge({"alg": "none", "typ": "JWT"}, base, None), 4100, "algorithm"),
            (
                "HS256 signed with the RSA public key",
                forge({"alg": "HS256", "typ": "JWT"}, base, PUBLIC),
                4100,
                "algorithm",
            ),
            ("expired beyond leeway", rs256(**self.claims(exp=994)), 4101, "expired"),
            ("nbf in the future", rs256(**self.claims(nbf=1_006)), 4100, "not_yet_valid"),
            ("wrong aud", rs256(**self.claims(aud="other")), 4100, "audience"),
            ("missing aud", rs256(**self.claims(aud=None)), 4100, "missing_aud"),
            ("wrong iss", rs256(**self.claims(iss="https://evil.example")), 4100, "issuer"),
            ("missing exp", rs256(**self.claims(exp=None)), 4100, "missing_exp"),
            ("bad signature", rs256(OTHER_PRIVATE, **base), 4100, "signature"),
            ("garbage", "garbage", 4100, "malformed"),
            ("three dots of garbage", "a.b.c", 4100, "malformed"),
            ("oversized", "x" * 10_000, 4100, "malformed"),
        ]
        for name, token, code, reason in cases:
            before = self.metric("warpsocket_auth_total", {"outcome": reason})
            self.assertEqual(await self.closed_after_hello(token), code, name)
            self.assertEqual(
                self.metric("warpsocket_auth_total", {"outcome": reason}), before + 1, name
            )
        # A token that is not a string is an invalid hello, not a refusal.
        client = await self.open()
        error = await self.hello_with(client, 12345)
        self.assertEqual((error["type"], error["code"]), ("error", 4001))
        # Healthy: everything refused is gone, and a good token is served.
        welcome = await self.hello_with(client, rs256(**base))
        self.assertEqual(welcome["type"], "welcome")
        self.assertEqual((await self.whoami(client))["user"], "alice")
        await wait_until(lambda: self.hub.connection_count == 1, what="refused ones detached")
        self.assertEqual(self.gate.open_connections, 1)
        self.assertEqual(self.metric("warpsocket_sessions"), 1)

    @async_test
    async def test_leeway_is_explicit_and_expiry_closes_4101(self) -> None:
        self.start_rs256()
        client = await self.open()
        # Expired 3 s ago, inside the 5 s leeway: accepted until 1002.
        welcome = await self.hello_with(client, rs256(**self.claims(exp=997)))
        self.assertEqual(welcome["type"], "welcome")
        self.advance(1)
        self.assertEqual((await self.whoami(client))["user"], "alice")
        self.advance(1)
        code, reason = await client.wait_closed()
        self.assertEqual((code, reason), (4101, "token_expired"))
        await wait_until(
            lambda: self.metric("warpsocket_disconnects_total", {"code": "4101"}) == 1,
            what="detach",
        )

    @async_test
    async def test_header_token_and_query_token(self) -> None:
        self.start_rs256()
        good = rs256(**self.claims())
        client = await self.open(headers={"Authorization": f"Bearer {good}"})
        self.assertEqual((await self.hello_with(client))["type"], "welcome")
        self.assertEqual((await self.whoami(client))["user"], "alice")
        # A refused header token costs the upgrade; without a hello token the
        # hello is closed with its code (a hello token wins: test_attacks).
        self.assertEqual(
            await self.closed_after_hello(None, headers={"Authorization": "Bearer nonsense"}), 4100
        )
        expired = rs256(**self.claims(exp=900))
        self.assertEqual(
            await self.closed_after_hello(None, headers={"Authorization": f"Bearer {expired}"}),
            4101,
        )
        # The query string is off by default (it ends up in access logs).
        self.assertEqual(await self.closed_after_hello(None, path=f"/ws?token={good}"), 4100)
        # A hello token is preferred over the header's.
        client = await self.open(headers={"Authorization": f"Bearer {good}"})
        self.assertEqual(
            (await self.hello_with(client, rs256(**self.claims(sub="bob")))).get("type"), "welcome"
        )
        self.assertEqual((await self.whoami(client))["user"], "bob")

    @async_test
    async def test_query_token_when_enabled(self) -> None:
        self.start_rs256(token_in_query=True)
        client = await self.open(path=f"/ws?token={rs256(**self.claims())}")
        self.assertEqual((await self.hello_with(client))["type"], "welcome")
        self.assertEqual((await self.whoami(client))["user"], "alice")

    @async_test
    async def test_refresh_before_expiry_keeps_the_connection(self) -> None:
        self.start_secure(SecurityOptions(authenticator=JWTAuthenticator(SECRET, ["HS256"])))
        client = await self.open()
        self.assertEqual(
            (await self.hello_with(client, hs256(sub="ann", exp=30)))["type"], "welcome"
        )
        self.advance(20)
        reply = await client.request({"type": "auth", "data": {"token": hs256(sub="ann", exp=80)}})
        self.assertEqual(reply["type"], "ack", reply)
        # Refused refreshes leave the connection and its expiry as they were.
        reply = await client.request({"type": "auth", "data": {"token": hs256(sub="eve", exp=90)}})
        self.assertEqual((reply["type"], reply["code"]), ("error", 4102))
        reply = await client.request({"type": "auth", "data": {"token": "junk"}})
        self.assertEqual((reply["type"], reply["code"]), ("error", 4100))
        # Oversized tokens get the token's code at any size (security.md: 8 KiB).
        for size in (9_000, 16_385, 100_000):
            reply = await client.request({"type": "auth", "data": {"token": "x" * size}})
            self.assertEqual((reply["type"], reply["code"]), ("error", 4100), size)
        self.advance(40)  # t = 60: past the first token, inside the refreshed one
        self.assertEqual((await self.whoami(client))["user"], "ann")
        self.assertIsNone(client.close_code)
        self.advance(20)  # t = 80
        code, _ = await client.wait_closed()
        self.assertEqual(code, 4101)
        self.assertEqual(self.metric("warpsocket_token_refreshes_total"), 1)

    @async_test
    async def test_claims_drive_room_and_event_policy(self) -> None:
        policy = ClaimsPolicy()
        self.start_secure(
            SecurityOptions(authenticator=JWTAuthenticator(SECRET, ["HS256"])),
            can_join=policy.can_join,
            can_publish=policy.can_publish,
            middleware=[policy],
        )
        self.hub.on("ping", lambda ctx, data: "pong")
        self.hub.on("admin", lambda ctx, data: "done")
        client = await self.open()
        token = hs256(sub="ann", exp=600, rooms=["chat.*"], events=["ping"], publish=[])
        welcome = await self.hello_with(client, token, rooms=["chat.a", "admin"])
        self.assertEqual(welcome["data"]["rooms"], ["chat.a"])
        self.assertEqual(welcome["data"]["denied"], {"admin": 4102})
        reply = await client.request({"type": "call", "event": "ping"})
        self.assertEqual(reply["data"], "pong")
        reply = await client.request({"type": "call", "event": "admin"})
        self.assertEqual((reply["type"], reply["code"]), ("error", 4102))
        reply = await client.request({"type": "event", "event": "x", "room": "chat.a", "ack": True})
        self.assertEqual((reply["type"], reply["code"]), ("error", 4102))
        # A refreshed token with more rights applies at once.
        wider = hs256(
            sub="ann", exp=600, rooms=["chat.*", "admin"], events=["*"], publish=["chat.*"]
        )
        self.assertEqual(
            (await client.request({"type": "auth", "data": {"token": wider}}))["type"], "ack"
        )
        self.assertEqual(
            (await client.request({"type": "subscribe", "room": "admin"}))["type"], "ack"
        )
        self.assertEqual((await client.request({"type": "call", "event": "admin"}))["data"], "done")
        reply = await client.request({"type": "event", "event": "x", "room": "chat.a", "ack": True})
        self.assertEqual(reply["type"], "ack")

    @async_test
    async def test_pluggable_asynchronous_authenticator(self) -> None:
        keys = StaticKeyAuthenticator({"key-1": "svc"})

        class Later:
            def authenticate(self, token: str, now: float) -> Deferred[Identity]:
                result: Deferred[Identity] = Deferred()
                reactor.callLater(
                    0.01, lambda: maybeDeferred(keys.authenticate, token, now).chainDeferred(result)
                )
                return result

        self.start_secure(SecurityOptions(authenticator=Later()))
        self.assertEqual(await self.closed_after_hello("key-2"), 4100)
        client = await self.open()
        self.assertEqual((await self.hello_with(client, "key-1"))["type"], "welcome")
        self.assertEqual((await self.whoami(client))["user"], "svc")
        self.assertEqual(self.metric("warpsocket_auth_total", {"outcome": "unknown_key"}), 1)

    @async_test
    async def test_resume_needs_the_same_user(self) -> None:
        self.start_secure(SecurityOptions(authenticator=JWTAuthenticator(SECRET, ["HS256"])))
        first = await self.open()
        welcome = await self.hello_with(first, hs256(sub="ann", exp=600))
        session = welcome["data"]["session"]
        secret = welcome["data"]["resume_token"]
        await first.drop()
        # Even holding the resume token, another user cannot take the session.
        thief = await self.open()
        welcome = await self.hello_with(
            thief, hs256(sub="eve", exp=600), session=session, resume_token=secret
        )
        self.assertFalse(welcome["data"]["resumed"])
        owner = await self.open()
        welcome = await self.hello_with(
            owner, hs256(sub="ann", exp=600), session=session, resume_token=secret
        )
        self.assertTrue(welcome["data"]["resumed"])


class ClientIntegrationTests(SecureTestCase):
    @async_test
    async def test_warpsocket_client_refreshes_in_band(self) -> None:
        """The Python client sends its token in hello and refreshes it with
        ``auth`` before ``exp``: the connection outlives every single token."""
        from warpsocket.client.client import WarpSocketClient
        from warpsocket.client.options import ClientOptions

        self.start_secure(SecurityOptions(authenticator=JWTAuthenticator(SECRET, ["HS256"])))
        issued: list[float] = []

        def provider() -> str:
            issued.append(self.clock.seconds())
            return hs256(sub="ann", exp=int(self.clock.seconds()) + 40)

        client = WarpSocketClient(
            f"ws://127.0.0.1:{self.port}/ws",
            ClientOptions(refresh_before=10, heartbeat_timeout=10_000),
            clock=self.clock,
            token=provider,
        )
        self.addCleanup(client.close)
        await client.connect()
        self.assertEqual(self.hub.sessions_of_user("ann"), {client.session})
        for _ in range(20):  # 100 s: 2.5 token lifetimes
            self.advance(5)
            await sleep(0.02)  # the network (the auth envelope) runs in real time
        self.assertGreaterEqual(self.metric("warpsocket_token_refreshes_total"), 3)
        self.assertEqual(self.metric("warpsocket_disconnects_total", {"code": "4101"}), 0)
        self.assertEqual(self.hub.connection_count, 1)
        self.assertGreaterEqual(len(issued), 4)


class JWTConfigTests(unittest.TestCase):
    def test_algorithms_are_pinned_and_never_mixed(self) -> None:
        for key, algorithms in [
            (SECRET, []),
            (SECRET, ["none"]),
            (SECRET, ["HS256", "RS256"]),
            (b"short", ["HS256"]),
            (PUBLIC, ["HS256"]),  # a public key as an HMAC secret
            (b"not a pem", ["RS256"]),
        ]:
            with self.subTest(algorithms=algorithms):
                self.assertRaises(ValueError, JWTAuthenticator, key, algorithms)
        self.assertRaises(ValueError, JWTAuthenticator, SECRET, ["HS256"], leeway=-1)

    def test_claims_are_judged_against_the_given_time(self) -> None:
        auth = JWTAuthenticator(SECRET, ["HS256"], leeway=2)
        identity = auth.authenticate(hs256(sub="a", exp=100, iat=50, role="x"), now=90)
        self.assertEqual((identity.user, identity.expires_at), ("a", 102.0))
        self.assertEqual(identity.claims["role"], "x")
        with self.assertRaises(AuthError) as caught:
            auth.authenticate(hs256(sub="a", exp=100), now=102)
        self.assertEqual(caught.exception.code, ErrorCode.TOKEN_EXPIRED)
        for claims in (
            {"sub": "a", "exp": True},
            {"sub": "a", "exp": "100"},
            {"sub": "a", "exp": 100, "iat": 200},
            {"sub": 7, "exp": 100},
            {"exp": 100},
        ):
            with self.subTest(claims=claims), self.assertRaises(AuthError) as caught:
                auth.authenticate(jwt.encode(claims, SECRET, algorithm="HS256"), now=0)
            self.assertEqual(caught.exception.code, ErrorCode.UNAUTHORIZED)

    def test_security_options_validate(self) -> None:
        for bad in [
            {"require_auth": True},
            {"allowed_origins": ("https://a.example/path",)},
            {"allowed_origins": ("app.example",)},
            {"deny_ips": ("10.0.0.0/33",)},
            {"trusted_proxies": -1},
            {"max_connections": 0},
            {"message_rate": 0},
            {"connection_burst": 0},
            {"upgrade_timeout": float("inf")},
        ]:
            with self.subTest(bad=bad):
                self.assertRaises(ValueError, SecurityOptions, **bad)
        defaults = SecurityOptions()
        self.assertFalse(defaults.auth_required)
        self.assertEqual((defaults.connection_bucket, defaults.message_bucket), (100, 2_000))
        self.assertEqual(defaults.max_outbound_hard, 16 * MiB)


# ---------------------------------------------------------------- addresses


class AddressTests(SecureTestCase):
    @async_test
    async def test_lists_apply_before_http_is_parsed(self) -> None:
        self.start_secure(SecurityOptions(allow_ips=("10.0.0.0/8", "::1/128")))
        # Refused at connectionMade: the answer comes before we send a byte.
        peer = await self.raw()
        await wait_until(lambda: peer.status is not None, what="refusal")
        self.assertEqual(peer.status, (403, "4104 address_rejected"))
        await peer.lost
        error = await self.refused()
        self.assertEqual((error.status, self.reason(error)), (403, "4104 address_rejected"))
        self.assertEqual(
            self.metric("warpsocket_refused_connections_total", {"reason": "address_rejected"}), 2
        )
        self.assertEqual(self.metric("warpsocket_rejected_handshakes_total"), 0)
        await wait_until(lambda: self.gate.open_connections == 0, what="released")
        self.assertEqual(self.gate.per_address, {})

    @async_test
    async def test_deny_wins(self) -> None:
        self.start_secure(SecurityOptions(allow_ips=("127.0.0.0/8",), deny_ips=("127.0.0.1",)))
        self.assertEqual(await self.raw_status(upgrade_request()), (403, "4104 address_rejected"))

    @async_test
    async def test_forwarded_for_behind_trusted_proxies(self) -> None:
        self.start_secure(
            SecurityOptions(trusted_proxies=1, deny_ips=("203.0.113.0/24", "2001:db8::/32"))
        )
        for forwarded in ("203.0.113.9", "198.51.100.1, 203.0.113.9", "2001:db8::5"):
            error = await self.refused(headers={"X-Forwarded-For": forwarded})
            self.assertEqual((error.status, self.reason(error)), (403, "4104 address_rejected"))
        # The client wrote the left entry itself: only the proxy's entry counts.
        client = await self.open(headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.1"})
        await self.hello_with(client)
        self.assertEqual((await self.whoami(client))["client_ip"], "198.51.100.1")
        self.assertEqual(self.gate.per_address, {"198.51.100.1": 1})
        # No header: the peer itself (the proxy) is the address.
        direct = await self.open()
        await self.hello_with(direct)
        self.assertEqual((await self.whoami(direct))["client_ip"], "127.0.0.1")

    @async_test
    async def test_proxy_protocol_endpoint(self) -> None:
        self.start_secure(
            SecurityOptions(deny_ips=("198.51.100.0/24",)),
            endpoints=("haproxy:tcp:0:interface=127.0.0.1",),
        )
        header = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n"
        self.assertEqual(
            await self.raw_status(header + upgrade_request()), (403, "4104 address_rejected")
        )
        header = b"PROXY TCP6 2001:db8::7 ::1 40000 80\r\n"
        peer = await self.raw_ws(header + upgrade_request())
        self.assertEqual(self.gate.per_address, {"2001:db8::/64": 1})
        self.assertEqual(peer.status, (101, "Switching Protocols"))


class AddressUnitTests(unittest.TestCase):
    def test_policy_ipv4_ipv6_and_mapped(self) -> None:
        policy = AddressPolicy.from_cidrs(
            allow=["10.0.0.0/8", "2001:db8::/32"], deny=["10.9.0.0/16"]
        )
        permits = {
            text: policy.permits(address)
            for text in ("10.1.2.3", "10.9.1.1", "192.0.2.1", "2001:db8::1", "2001:db9::1")
            if (address := parse_address(text)) is not None
        }
        self.assertEqual(
            permits,
            {
                "10.1.2.3": True,
                "10.9.1.1": False,
                "192.0.2.1": False,
                "2001:db8::1": True,
                "2001:db9::1": False,
            },
        )
        mapped = parse_address("::ffff:10.1.2.3")
        self.assertEqual(mapped, ipaddress.IPv4Address("10.1.2.3"))
        self.assertEqual(parse_address("[2001:db8::1]:443"), ipaddress.IPv6Address("2001:db8::1"))
        self.assertEqual(parse_address("192.0.2.1:80"), ipaddress.IPv4Address("192.0.2.1"))
        self.assertIsNone(parse_address("unix:/tmp/x"))
        self.assertRaises(ValueError, AddressPolicy.from_cidrs, ["nope"])

    def test_forwarded_for(self) -> None:
        self.assertIsNone(forwarded_client("192.0.2.1", 0))
        self.assertEqual(str(forwarded_client("6.6.6.6, 192.0.2.1", 1)), "192.0.2.1")
        self.assertEqual(str(forwarded_client("6.6.6.6, 192.0.2.1, 10.0.0.2", 2)), "192.0.2.1")
        self.assertIsNone(forwarded_client("192.0.2.1", 2))  # fewer hops than proxies
        self.assertIsNone(forwarded_client("garbage", 1))
        self.assertIsNone(forwarded_client(None, 1))

    def test_ipv6_counts_per_64(self) -> None:
        one = parse_address("2001:db8:1:2::1")
        two = parse_address("2001:db8:1:2:ffff::9")
        assert one is not None and two is not None
        self.assertEqual(address_key(one), address_key(two))
        self.assertEqual(address_key(one), "2001:db8:1:2::/64")

    def test_origin_parsing(self) -> None:
        self.assertEqual(parse_origin("HTTPS://App.Example"), ("https", "app.example", 443))
        self.assertEqual(parse_origin("http://a.example:8080"), ("http", "a.example", 8080))
        self.assertIsNone(parse_origin("null"))
        self.assertIsNone(parse_origin("file:///etc/passwd"))
        policy = OriginPolicy.from_strings(["https://a.example"])
        self.assertIsNone(policy.check(None, auth_required=False))
        self.assertEqual(
            policy.check("https://a.example:444", auth_required=True), ErrorCode.ORIGIN_REJECTED
        )


# ---------------------------------------------------------------- limits


class ConnectionLimitTests(SecureTestCase):
    @async_test
    async def test_connections_per_node(self) -> None:
        self.start_secure(SecurityOptions(max_connections=3))
        clients = [await self.open() for _ in range(3)]
        self.assertEqual(
            await self.raw_status(upgrade_request()), (503, "4202 too_many_connections")
        )
        await clients[0].close()
        await wait_until(lambda: self.gate.open_connections == 2, what="slot freed")
        client = await self.open()
        self.assertEqual((await self.hello_with(client))["type"], "welcome")
        self.assertEqual(
            self.metric("warpsocket_refused_connections_total", {"reason": "too_many_connections"}),
            1,
        )

    @async_test
    async def test_connections_per_address(self) -> None:
        self.start_secure(SecurityOptions(max_connections_per_ip=2))
        first = await self.open()
        await self.open()
        error = await self.refused()
        self.assertEqual((error.status, self.reason(error)), (503, "4202 too_many_connections"))
        await first.close()
        await wait_until(lambda: self.gate.per_address == {"127.0.0.1": 1}, what="released")
        await self.open()

    @async_test
    async def test_connection_rate_trips_and_recovers(self) -> None:
        self.start_secure(SecurityOptions(connection_rate=2, connection_burst=3))
        for _ in range(3):
            await self.open()
        error = await self.refused()
        self.assertEqual((error.status, self.reason(error)), (429, "4200 rate_limited"))
        self.assertEqual(self.metric("warpsocket_rate_limited_total", {"scope": "connection"}), 1)
        self.clock.advance(0.5)  # one token back at 2 per second
        await self.open()
        error = await self.refused()
        self.assertEqual(error.status, 429)
        self.clock.advance(10)
        for _ in range(3):
            await self.open()
        self.assertEqual(self.hub.connection_count, 7)

    @async_test
    async def test_slowloris_handshakes_dropped_at_the_deadline(self) -> None:
        """200 connections dribbling their upgrade request one byte a second."""
        self.start_secure(
            SecurityOptions(upgrade_timeout=2.0, max_connections_per_ip=500, connection_burst=500)
        )
        served = await self.open()
        await self.hello_with(served)
        request = upgrade_request()
        peers = [await self.raw() for _ in range(200)]
        for second in range(2):
            for peer in peers:
                peer.write(request[second : second + 1])
            await sleep(0.02)
            self.assertFalse(any(peer.lost.called for peer in peers))
            self.advance(1)
        await wait_until(lambda: all(peer.lost.called for peer in peers), what="all dropped")
        self.assertTrue(all(not peer.data for peer in peers))
        self.assertEqual(self.metric("warpsocket_upgrade_timeouts_total"), 200)
        self.assertEqual(self.gate.open_connections, 1)
        self.assertEqual(self.gate.per_address, {"127.0.0.1": 1})
        # The upgraded connection is untouched and new ones are served.
        self.assertEqual((await self.whoami(served))["user"], None)
        late = await self.open()
        self.assertEqual((await self.hello_with(late))["type"], "welcome")


class MessageRateTests(SecureTestCase):
    @async_test
    async def test_message_rate_errors_then_closes_and_recovers(self) -> None:
        self.start_secure(SecurityOptions(message_rate=5, message_burst=5))
        self.hub.on("ping", lambda ctx, data: "pong")
        bystander = await self.open()
        await self.hello_with(bystander)
        client = await self.open()
        await self.hello_with(client)  # 1 of 5 tokens
        for _ in range(4):
            self.assertEqual(
                (await client.request({"type": "call", "event": "ping"}))["type"], "result"
            )
        refused = await client.request({"type": "call", "event": "ping"})
        self.assertEqual((refused["type"], refused["code"]), ("error", 4200))
        self.assertEqual(refused["data"]["name"], "rate_limited")
        # Recovers as the bucket refills on the hub's clock.
        self.clock.advance(1)
        self.assertEqual(
            (await client.request({"type": "call", "event": "ping"}))["type"], "result"
        )
        # A flood: 4 accepted, 5 answered 4200, then the 6th refusal closes.
        sent = [client.send({"type": "call", "event": "ping"}) for _ in range(4 + 6)]
        code, reason = await client.wait_closed()
        self.assertEqual((code, reason), (4200, "rate_limited"))
        answers = {m["ref"]: m for m in client.messages if m.get("ref") in {s["id"] for s in sent}}
        self.assertEqual([answers[s["id"]]["type"] for s in sent[:4]], ["result"] * 4)
        self.assertEqual([answers[s["id"]]["code"] for s in sent[4:9]], [4200] * 5)
        self.assertNotIn(sent[9]["id"], answers)
        self.assertEqual(self.metric("warpsocket_rate_limited_total", {"scope": "message"}), 7)
        # Others are unaffected.
        self.assertEqual(
            (await bystander.request({"type": "call", "event": "ping"}))["data"], "pong"
        )

    def test_token_bucket(self) -> None:
        bucket = TokenBucket(rate=2, burst=4, now=0)
        self.assertEqual([bucket.take(0) for _ in range(5)], [True] * 4 + [False])
        self.assertFalse(bucket.take(0.4))
        self.assertTrue(bucket.take(0.5))
        self.assertTrue(bucket.full(100))
        now = [0.0]
        buckets: KeyedBuckets[str] = KeyedBuckets(1, 1, lambda: now[0], max_keys=2)
        self.assertTrue(buckets.take("a"))
        self.assertFalse(buckets.take("a"))
        self.assertTrue(buckets.take("b"))
        self.assertTrue(buckets.take("c"))  # evicts "a" (least recently used)
        self.assertEqual(len(buckets), 2)
        now[0] = 10
        self.assertTrue(buckets.take("d"))
        self.assertEqual(len(buckets), 1)  # refilled buckets ("c") are forgotten


class SizeTests(SecureTestCase):
    """Each hostile frame is closed with 1009 before the server buffers it."""

    async def closed_with(self, *frames: bytes, request: bytes | None = None) -> int | None:
        peer = await self.raw_ws(request)
        tracemalloc.start()
        try:
            for data in frames:
                peer.write(data)
            await peer.lost
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 8 * MiB, "memory is not flat")
        return peer.close_code

    async def healthy(self) -> None:
        client = await self.open()
        self.assertEqual((await self.hello_with(client))["type"], "welcome")
        await wait_until(lambda: self.hub.connection_count == 1, what="hostile ones detached")

    @async_test
    async def test_oversized_frame(self) -> None:
        self.start_secure()
        self.assertEqual(await self.closed_with(frame(b"a" * (MiB + 1))), 1009)
        await self.healthy()

    @async_test
    async def test_oversized_message_in_1000_fragments(self) -> None:
        self.start_secure()
        piece = b"a" * 1_100  # 1,000 x 1,100 bytes > 1 MiB, each frame tiny
        frames = [frame(piece, 0x1, fin=False)]
        frames += [frame(piece, 0x0, fin=False) for _ in range(998)]
        frames.append(frame(piece, 0x0, fin=True))
        self.assertEqual(await self.closed_with(b"".join(frames)), 1009)
        await self.healthy()

    @async_test
    async def test_frame_header_declaring_2_63_bytes(self) -> None:
        self.start_secure()
        self.assertEqual(await self.closed_with(frame(b"", declared=2**63 - 1)), 1009)
        await self.healthy()

    @async_test
    async def test_deflate_bomb_with_compression_on(self) -> None:
        self.start_secure(SecurityOptions(compression=True))
        bomb = deflate_bomb(64 * MiB)  # inflates to 64x the limit
        self.assertLess(len(bomb), 128 * 1024)
        request = upgrade_request(extensions="permessage-deflate")
        code = await self.closed_with(frame(bomb, rsv1=True), request=request)
        self.assertEqual(code, 1009)
        await self.healthy()

    @async_test
    async def test_compression_is_off_by_default(self) -> None:
        self.start_secure()
        peer = await self.raw_ws(upgrade_request(extensions="permessage-deflate"))
        self.assertNotIn(b"sec-websocket-extensions", bytes(peer.data).lower())


class SlowConsumerTests(SecureTestCase):
    @async_test
    async def test_frozen_reader_closed_4201_others_keep_receiving_then_resume(self) -> None:
        self.start_secure(
            SecurityOptions(max_outbound_buffer=64 * 1024, slow_consumer_grace=2.0),
            open_rooms=True,
        )
        slow = await self.open()
        await slow.hello(rooms=["feed"])
        normal = await self.open()
        await normal.hello(rooms=["feed"])
        server_side = self.shrink_buffers(slow)
        slow.freeze()
        pad = "x" * 16_000
        published = 0
        while buffered_bytes(server_side.transport) <= 64 * 1024:
            self.assertLess(published, 400, "the buffer never filled")
            self.hub.publish("feed", "tick", {"n": published, "pad": pad})
            published += 1
            await sleep(0.005)
        # Over the bound, but within the grace: still open.
        self.advance(1)
        self.assertTrue(server_side.can_send)
        self.advance(1)
        self.assertFalse(server_side.can_send)
        self.assertEqual(self.metric("warpsocket_slow_consumers_total"), 1)
        # It reads the close frame if it reads within the slow consumer's
        # close timeout (after it, the connection is aborted: test_attacks).
        slow.thaw()
        code, reason = await slow.wait_closed()
        self.assertEqual((code, reason), (4201, "slow_consumer"))
        # The normal client got everything, and keeps receiving.
        self.hub.publish("feed", "tick", {"n": published, "pad": ""})
        published += 1
        await wait_until(
            lambda: len([m for m in normal.messages if m.get("event") == "tick"]) == published,
            what="normal client caught up",
        )
        await wait_until(
            lambda: self.metric("warpsocket_disconnects_total", {"code": "4201"}) == 1,
            what="detach",
        )
        # It resumes from history without loss.
        seen = [m["data"]["n"] for m in slow.messages if m.get("event") == "tick"]
        self.assertEqual(seen, list(range(len(seen))))
        again = await self.open()
        welcome = await again.hello(session=slow.session, streams=slow.positions, rooms=["feed"])
        self.assertTrue(welcome["data"]["resumed"])
        self.assertTrue(welcome["data"]["streams"]["room:feed"]["recovered"])
        await wait_until(
            lambda: (
                len([m for m in again.messages if m.get("event") == "tick"])
                == published - len(seen)
            ),
            what="replay",
        )
        replayed = [m["data"]["n"] for m in again.messages if m.get("event") == "tick"]
        self.assertEqual(seen + replayed, list(range(published)))

    @async_test
    async def test_hard_cap_closes_without_waiting(self) -> None:
        self.start_secure(
            SecurityOptions(max_outbound_buffer=16 * 1024, slow_consumer_grace=1_000),
            open_rooms=True,
        )
        slow = await self.open()
        await slow.hello(rooms=["feed"])
        server_side = self.shrink_buffers(slow)
        slow.freeze()
        for n in range(400):
            if not server_side.can_send:
                break
            self.hub.publish("feed", "tick", {"n": n, "pad": "y" * 8_000})
            await sleep(0.002)
        self.assertFalse(server_side.can_send)
        # Never more than the hard cap (4 x the bound) plus the close frame.
        self.assertLessEqual(buffered_bytes(server_side.transport), 64 * 1024 + 8_100)
        slow.thaw()
        code, _ = await slow.wait_closed()
        self.assertEqual(code, 4201)


class TLSTests(SecureTestCase):
    CERTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "certs")

    def endpoint(self) -> str:
        key, cert = os.path.join(self.CERTS, "server.key"), os.path.join(self.CERTS, "server.pem")
        return f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"

    def test_ssl_endpoint_defaults(self) -> None:
        """What docs/security.md promises of ``ssl:`` endpoints: TLS 1.2 or
        later, no TLS compression, forward-secret AEAD suites first."""
        factory: Any = serverFromString(reactor, self.endpoint())._sslContextFactory
        options = factory._options
        for flag in ("OP_NO_SSLv3", "OP_NO_TLSv1", "OP_NO_TLSv1_1"):
            self.assertTrue(options & getattr(SSL, flag), flag)
        self.assertFalse(options & SSL.OP_NO_TLSv1_2)
        self.assertTrue(options & SSL.OP_NO_COMPRESSION)
        connection = SSL.Connection(factory.getContext(), None)
        ciphers = connection.get_cipher_list()
        self.assertTrue(ciphers[0].startswith("TLS_AES_256_GCM"), ciphers[:3])
        self.assertFalse([c for c in ciphers if "RC4" in c or "MD5" in c or "NULL" in c])

    @async_test
    async def test_wss_behind_the_guard_and_refusals_skip_the_tls_handshake(self) -> None:
        self.start_secure(SecurityOptions(max_connections=1), endpoints=[self.endpoint()])
        with open(os.path.join(self.CERTS, "ca.pem"), "rb") as pem:
            ca = Certificate.loadPEM(pem.read())
        client = await connect(
            self.port, tls=optionsForClientTLS("localhost", trustRoot=ca), host="localhost"
        )
        self.clients.append(client)
        self.assertEqual((await client.hello())["type"], "welcome")
        with self.assertRaises(ConnectFailedError):
            await connect(
                self.port, tls=optionsForClientTLS("localhost", trustRoot=ca), host="localhost"
            )
        self.assertEqual(
            self.metric("warpsocket_refused_connections_total", {"reason": "too_many_connections"}),
            1,
        )
        self.assertEqual((await self.whoami(client))["user"], None)


class HubSecurityDefaultsTests(unittest.TestCase):
    def test_hub_options_carry_safe_defaults(self) -> None:
        security = HubOptions().security
        self.assertEqual(security.allowed_origins, ())
        self.assertFalse(security.allow_null_origin)
        self.assertFalse(security.token_in_query)
        self.assertFalse(security.compression)
        self.assertEqual(security.max_outbound_buffer, 4 * MiB)

    def test_identity_checked_for_expiry_from_custom_authenticators(self) -> None:
        class Stale:
            def authenticate(self, token: str, now: float) -> Identity:
                return Identity("x", {}, expires_at=now)

        hub = Hub(HubOptions(security=SecurityOptions(authenticator=Stale())), clock=Clock())
        gate = Gate(hub.options.security, hub)
        failures: list[Failure] = []
        gate.authenticate("t").addErrback(failures.append)
        self.assertEqual(cast(AuthError, failures[0].value).code, ErrorCode.TOKEN_EXPIRED)
