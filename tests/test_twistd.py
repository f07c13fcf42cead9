"""``twistd warpsocket``: option parsing, --app loading, and real server processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from service_identity import VerificationError
from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, ProcessTerminated
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial import unittest
from twisted.web.client import BrowserLikePolicyForHTTPS

from tests import example_app
from tests.helpers.processes import ServerProcess, free_port
from tests.wsclient import ConnectFailedError, WsClient, async_test, connect, http_get, sleep
from warpsocket.backends.memory import MemoryBackend
from warpsocket.backends.redis import RedisBackend
from warpsocket.server.cli import Options, makeService
from warpsocket.server.hub import Hub
from warpsocket.server.middleware import LoggingMiddleware
from warpsocket.server.security import JWTAuthenticator
from warpsocket.server.service import WarpSocketService

REPO = Path(__file__).resolve().parent.parent
CERTS = REPO / "certs"


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class OptionsTests(unittest.TestCase):
    def test_defaults(self) -> None:
        options = parse()
        self.assertEqual(options["endpoints"], ["tcp:8080"])
        self.assertEqual(options["path"], "/ws")
        hub_options = options["hub_options"]
        core = hub_options.core
        self.assertEqual(
            (
                core.heartbeat_interval_ms,
                core.heartbeat_timeout_ms,
                core.handshake_timeout_ms,
                core.session_ttl_ms,
                core.idle_timeout_ms,
                core.max_message_size,
            ),
            (25_000, 60_000, 10_000, 120_000, None, 1_048_576),
        )
        self.assertEqual((core.history.max_messages, core.history.max_age_ms), (1000, 300_000))
        self.assertEqual((core.dedup.max_records, core.dedup.max_age_ms), (100_000, 300_000))
        self.assertEqual(hub_options.reconnect_hint_ms, 2_000)
        self.assertEqual(hub_options.shutdown_timeout, 10.0)
        self.assertEqual(hub_options.drain_delay, 0.0)
        self.assertFalse(hub_options.open_rooms)
        self.assertFalse(hub_options.debug)
        self.assertNotIn("app_callable", options)

    def test_values(self) -> None:
        options = parse(
            "--endpoint",
            "tcp:0:interface=127.0.0.1",
            "--endpoint=unix:/tmp/warpsocket-test.sock",
            "--path=/api/ws",
            "--node=edge-1",
            "--heartbeat-interval=5",
            "--heartbeat-timeout=12.5",
            "--idle-timeout=30",
            "--handshake-timeout=2",
            "--session-ttl=60",
            "--history-size=10",
            "--history-age=20",
            "--history-bytes=65536",
            "--history-node-bytes=1048576",
            "--dedup-size=5",
            "--dedup-age=7",
            "--max-message-size=4096",
            "--shutdown-timeout=3",
            "--reconnect-hint=0.5",
            "--drain-delay=15",
            "--open-rooms",
            "--debug",
        )
        self.assertEqual(
            options["endpoints"], ["tcp:0:interface=127.0.0.1", "unix:/tmp/warpsocket-test.sock"]
        )
        hub_options = options["hub_options"]
        core = hub_options.core
        self.assertEqual(core.node, "edge-1")
        self.assertEqual(
            (core.heartbeat_interval_ms, core.heartbeat_timeout_ms, core.idle_timeout_ms),
            (5_000, 12_500, 30_000),
        )
        self.assertEqual((core.handshake_timeout_ms, core.session_ttl_ms), (2_000, 60_000))
        self.assertEqual((core.history.max_messages, core.history.max_age_ms), (10, 20_000))
        self.assertEqual((core.history.max_bytes, core.history.max_node_bytes), (65536, 1 << 20))
        self.assertEqual((core.dedup.max_records, core.dedup.max_age_ms), (5, 7_000))
        self.assertEqual(core.max_message_size, 4096)
        self.assertEqual((hub_options.shutdown_timeout, hub_options.reconnect_hint_ms), (3.0, 500))
        self.assertEqual(hub_options.drain_delay, 15.0)
        self.assertTrue(hub_options.open_rooms)
        self.assertTrue(hub_options.debug)

    def test_bad_values_are_usage_errors(self) -> None:
        bad = [
            ["--endpoint", "bogus:1234"],
            ["--endpoint", "tcp:notaport"],
            ["--endpoint", "ssl:8443:privateKey=/nonexistent.key:certKey=/nonexistent.pem"],
            ["--heartbeat-timeout=-5"],
            ["--handshake-timeout=0"],
            ["--idle-timeout=-1"],
            ["--session-ttl=soon"],
            ["--history-size=0"],
            ["--history-bytes=0"],
            ["--history-bytes=1000", "--history-node-bytes=999"],
            ["--max-message-size=-1"],
            ["--reconnect-hint=-2"],
            ["--drain-delay=-1"],
            ["--drain-delay=later"],
            ["--heartbeat-interval=30", "--heartbeat-timeout=20"],
            ["--path=ws"],
            ["--path=/"],
            ["--app=no_colon_here"],
            ["--app=tests.no_such_module:setup"],
            ["--app=tests.example_app:missing"],
            ["--app=tests.example_app:not_callable"],
            ["--no-such-option"],
        ]
        for args in bad:
            with self.subTest(args=args):
                self.assertRaises(usage.UsageError, parse, *args)

    def test_app_is_loaded_and_called_with_the_hub(self) -> None:
        options = parse("--endpoint=tcp:0:interface=127.0.0.1", "--app=tests.example_app:setup")
        self.assertIs(options["app_callable"], example_app.setup)
        service = makeService(options)
        assert isinstance(service, WarpSocketService)
        self.assertIsInstance(service.hub, Hub)
        self.assertIs(service.hub.handlers["add"], example_app.add)
        self.assertIn("whoami", service.hub.handlers)
        self.assertFalse(service.running)

    def test_debug_adds_logging_middleware(self) -> None:
        service = makeService(parse("--endpoint=tcp:0", "--debug"))
        assert isinstance(service, WarpSocketService)
        self.assertIsInstance(service.hub.middleware[0], LoggingMiddleware)

    def test_plugin_is_registered(self) -> None:
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("warpsocket", makers)
        self.assertIs(makers["warpsocket"].options, Options)


class ClusterOptionsTests(unittest.TestCase):
    """--redis and --redis-sentinel build the Redis backend; no option, the memory one."""

    def test_memory_by_default(self) -> None:
        service = makeService(parse())
        assert isinstance(service, WarpSocketService)
        self.assertIsInstance(service.hub.backend, MemoryBackend)

    def test_redis_url(self) -> None:
        options = parse("--redis", "redis://:pw@127.0.0.1:6390/2", "--redis-prefix", "app1:")
        backend = options["backend"]
        self.assertIsInstance(backend, RedisBackend)
        self.assertEqual(backend.options.prefix, "app1:")
        self.assertEqual(backend.options.url, "redis://:pw@127.0.0.1:6390/2")
        service = makeService(options)
        assert isinstance(service, WarpSocketService)
        self.assertIs(service.hub.backend, backend)

    def test_sentinels(self) -> None:
        options = parse(
            "--redis-sentinel",
            "127.0.0.1:26379",
            "--redis-sentinel",
            "10.0.0.2:26379",
            "--redis-service",
            "ws",
        )
        backend = options["backend"]
        self.assertEqual(backend.options.sentinels, ("127.0.0.1:26379", "10.0.0.2:26379"))
        self.assertEqual(backend.options.service, "ws")

    def test_bad_values_are_usage_errors(self) -> None:
        for args in (
            ("--redis", "http://127.0.0.1:6379"),
            ("--redis-sentinel", "no-port"),
            ("--redis", "redis://127.0.0.1:6379/0", "--redis-sentinel", "127.0.0.1:26379"),
        ):
            self.assertRaises(usage.UsageError, parse, *args)


class SecurityOptionsTests(unittest.TestCase):
    """The security options (docs/security.md) and their safe defaults."""

    def key_file(self, content: bytes) -> str:
        path = Path(self.mktemp())
        path.write_bytes(content)
        return str(path)

    def test_defaults_are_safe(self) -> None:
        security = parse()["hub_options"].security
        self.assertEqual(security.allowed_origins, ())
        self.assertFalse(security.allow_null_origin)
        self.assertIsNone(security.authenticator)
        self.assertFalse(security.auth_required)
        self.assertFalse(security.token_in_query)
        self.assertFalse(security.compression)
        self.assertEqual(
            (security.allow_ips, security.deny_ips, security.trusted_proxies), ((), (), 0)
        )
        self.assertEqual(
            (
                security.max_connections,
                security.max_connections_per_ip,
                security.connection_rate,
                security.connection_bucket,
                security.message_rate,
                security.message_bucket,
                security.upgrade_timeout,
                security.max_outbound_buffer,
                security.slow_consumer_grace,
            ),
            (10_000, 256, 20.0, 100, 1_000.0, 2_000, 10.0, 4_194_304, 10.0),
        )

    def test_values(self) -> None:
        secret = self.key_file(b"k" * 40 + b"\n")
        security = parse(
            "--allow-origin=https://app.example",
            "--allow-origin",
            "https://admin.example:8443",
            "--allow-null-origin",
            "--jwt-secret",
            secret,
            "--jwt-algorithm=HS256",
            "--jwt-algorithm=HS512",
            "--jwt-audience=api",
            "--jwt-issuer=https://issuer.example",
            "--jwt-leeway=30",
            "--optional-auth",
            "--allow-query-token",
            "--allow-ip=10.0.0.0/8",
            "--allow-ip=2001:db8::/32",
            "--deny-ip=10.6.6.0/24",
            "--trusted-proxies=2",
            "--max-connections=50000",
            "--max-connections-per-ip=10",
            "--connection-rate=2.5",
            "--connection-burst=7",
            "--message-rate=50",
            "--message-burst=60",
            "--max-outbound-buffer=65536",
            "--slow-consumer-grace=3",
            "--handshake-timeout=4",
            "--compression",
        )["hub_options"].security
        self.assertEqual(
            security.allowed_origins, ("https://app.example", "https://admin.example:8443")
        )
        self.assertTrue(security.allow_null_origin)
        authenticator = security.authenticator
        assert isinstance(authenticator, JWTAuthenticator)
        self.assertEqual(authenticator.algorithms, ("HS256", "HS512"))
        self.assertEqual(
            (authenticator.audience, authenticator.issuer, authenticator.leeway),
            ("api", "https://issuer.example", 30.0),
        )
        self.assertFalse(security.auth_required)
        self.assertTrue(security.token_in_query)
        self.assertEqual(security.allow_ips, ("10.0.0.0/8", "2001:db8::/32"))
        self.assertEqual(security.deny_ips, ("10.6.6.0/24",))
        self.assertEqual(security.trusted_proxies, 2)
        self.assertEqual((security.max_connections, security.max_connections_per_ip), (50_000, 10))
        self.assertEqual((security.connection_rate, security.connection_bucket), (2.5, 7))
        self.assertEqual((security.message_rate, security.message_bucket), (50.0, 60))
        self.assertEqual(
            (security.max_outbound_buffer, security.slow_consumer_grace), (65_536, 3.0)
        )
        self.assertEqual(security.upgrade_timeout, 4.0)
        self.assertTrue(security.compression)

    def test_public_key_requires_auth_by_default(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        pem = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        security = parse("--jwt-public-key", self.key_file(pem), "--jwt-algorithm=ES256")[
            "hub_options"
        ].security
        self.assertTrue(security.auth_required)
        assert isinstance(security.authenticator, JWTAuthenticator)
        self.assertEqual(security.authenticator.algorithms, ("ES256",))

    def test_bad_values_are_usage_errors(self) -> None:
        secret = self.key_file(b"k" * 40)
        short = self.key_file(b"short")
        bad = [
            ["--allow-origin=https://app.example/path"],
            ["--allow-origin=app.example"],
            ["--allow-ip=10.0.0.0/33"],
            ["--deny-ip=not-an-ip"],
            ["--trusted-proxies=-1"],
            ["--max-connections=0"],
            ["--max-connections-per-ip=x"],
            ["--connection-rate=0"],
            ["--message-rate=-3"],
            ["--message-burst=0"],
            ["--max-outbound-buffer=0"],
            ["--slow-consumer-grace=0"],
            ["--jwt-leeway=-1"],
            ["--require-auth"],
            ["--optional-auth"],
            ["--jwt-secret", "/nonexistent/secret"],
            ["--jwt-secret", short],
            ["--jwt-secret", secret, "--jwt-algorithm=RS256"],
            ["--jwt-secret", secret, "--jwt-algorithm=none"],
            ["--jwt-secret", secret, "--jwt-public-key", secret],
            ["--jwt-public-key", secret],
            ["--jwt-audience=api"],
            ["--jwt-secret", secret, "--require-auth", "--optional-auth"],
        ]
        for args in bad:
            with self.subTest(args=args):
                self.assertRaises(usage.UsageError, parse, *args)


# ---------------------------------------------------------------- real processes


class ProcessTests(unittest.TestCase):
    timeout = 40

    def spawn(self, args: list[str]) -> ServerProcess:
        """Run ``args`` with this interpreter in a fresh temp dir holding ``certs/``."""
        cwd = Path(self.mktemp())
        cwd.mkdir(parents=True)
        shutil.copytree(CERTS, cwd / "certs")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        process = ServerProcess()
        reactor.spawnProcess(
            process, sys.executable, [sys.executable, *args], env=env, path=str(cwd)
        )

        async def stop() -> None:
            if not process.ended.called:
                process.transport.signalProcess("KILL")  # type: ignore[union-attr]
                await process.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        return process

    async def until_serving(
        self, process: ServerProcess, port: int, tls: Any = None, deadline: float = 20.0
    ) -> None:
        """Poll ``/healthz`` until the server answers 200."""
        give_up = reactor.seconds() + deadline
        while True:
            if process.ended.called:
                self.fail(f"server exited early:\n{process.log()}")
            try:
                code, body, _ = await http_get(port, "/healthz", tls=tls)
            except (ConnectionRefusedError, OSError):
                code = 0
            if code == 200:
                self.assertEqual(body, b"ok\n")
                return
            if reactor.seconds() > give_up:
                self.fail(f"server did not come up:\n{process.log()}")
            await sleep(0.1)

    async def hello(self, port: int, tls: Any = None) -> WsClient:
        client = await connect(port, tls=tls, host="localhost" if tls else "127.0.0.1")
        welcome = await client.hello()
        self.assertEqual(welcome["type"], "welcome")
        self.assertFalse(welcome["data"]["resumed"])
        return client

    async def terminate(self, process: ServerProcess, clients: list[WsClient]) -> None:
        """SIGTERM: a graceful stop (4500 to clients) and a clean exit."""
        process.transport.signalProcess("TERM")  # type: ignore[union-attr]
        for client in clients:
            code, reason = await client.wait_closed(timeout=15)
            self.assertEqual(code, 4500)
            self.assertEqual(json.loads(reason or ""), {"retry_after_ms": 2_000})
        ended = await process.ended
        # After a graceful stop twist/twistd re-raise the signal on themselves
        # (twisted.application.app._exitWithSignal) so that the parent sees the
        # conventional "terminated by SIGTERM" status: that *is* the clean exit.
        self.assertIsInstance(ended, ProcessTerminated, process.log())
        assert isinstance(ended, ProcessTerminated)
        self.assertEqual((ended.signal, ended.exitCode), (signal.SIGTERM, None), process.log())
        self.assertNotIn("Traceback", process.log())
        self.assertNotIn("Unhandled", process.log())

    @async_test
    async def test_twist_runs_the_plugin(self) -> None:
        """``python -m twisted warpsocket`` (twist: always in the foreground)."""
        port = free_port()
        process = self.spawn(
            [
                "-m",
                "twisted",
                "warpsocket",
                "--endpoint",
                f"tcp:{port}:interface=127.0.0.1",
                "--app",
                "tests.example_app:setup",
                "--node",
                "proc-1",
            ]
        )
        await self.until_serving(process, port)
        client = await self.hello(port)
        assert client.welcome is not None
        self.assertEqual(client.welcome["data"]["node"], "proc-1")
        reply = await client.request({"type": "call", "event": "add", "data": [1, 2, 3]})
        self.assertEqual((reply["type"], reply["data"]), ("result", 6))
        _, body, _ = await http_get(port, "/metrics")
        self.assertIn(b"warpsocket_connections 1.0", body)
        await self.terminate(process, [client])

    @async_test
    async def test_twistd_over_tls(self) -> None:
        """``twistd -n warpsocket`` with two ssl: endpoints: the right and the wrong name."""
        good, wrong = free_port(), free_port()
        process = self.spawn(
            [
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "-n",
                "--pidfile=",
                "warpsocket",
                "--endpoint",
                f"ssl:{good}:privateKey=certs/server.key:certKey=certs/server.pem"
                ":interface=127.0.0.1",
                "--endpoint",
                f"ssl:{wrong}:privateKey=certs/other.key:certKey=certs/other.pem"
                ":interface=127.0.0.1",
            ]
        )
        ca = Certificate.loadPEM((CERTS / "ca.pem").read_bytes())
        await self.until_serving(process, good, tls=BrowserLikePolicyForHTTPS(trustRoot=ca))
        tls = optionsForClientTLS("localhost", trustRoot=ca)
        client = await self.hello(good, tls=tls)
        self.assertEqual(client.subprotocol, "warpsocket.v1.json")
        # The other certificate chains to the same CA but names other.example.
        with self.assertRaises(ConnectFailedError) as caught:
            await connect(wrong, tls=optionsForClientTLS("localhost", trustRoot=ca))
        self.assertTrue(caught.exception.failure.check(VerificationError), caught.exception)
        # ... and a client that expects other.example accepts it (so the chain is fine).
        other = await self.hello(wrong, tls=optionsForClientTLS("other.example", trustRoot=ca))
        await self.terminate(process, [client, other])

    def test_bad_option_exits_with_usage_error(self) -> None:
        process = self.spawn(["-m", "twisted", "warpsocket", "--endpoint", "bogus:1"])

        def check(ended: BaseException) -> None:
            self.assertIsInstance(ended, ProcessTerminated)
            assert isinstance(ended, ProcessTerminated)
            self.assertEqual(ended.exitCode, 64)  # EX_USAGE
            self.assertIn("bad --endpoint 'bogus:1'", process.log())
            self.assertNotIn("Traceback", process.log())

        return process.ended.addCallback(check)
