"""Replacing the certificate of a running server (warpsocket/server/tls_reload.py).

Real TLS connections verify which certificate the server presents: the
development CA signed one for ``localhost`` (server.pem) and one for
``other.example`` (other.pem), so a client expecting ``other.example`` can
connect only once the server has loaded other.pem.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from typing import Any

from twisted.internet.ssl import Certificate, optionsForClientTLS

from tests.wsclient import ConnectFailedError, ServerTestCase, WsClient, async_test, connect
from warpsocket.server import cli

CERTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "certs")


class TLSReloadTests(ServerTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.key = os.path.join(self.dir, "key.pem")
        self.cert = os.path.join(self.dir, "cert.pem")
        self.install("server")
        with open(os.path.join(CERTS, "ca.pem"), "rb") as pem:
            self.ca = Certificate.loadPEM(pem.read())

    def install(self, name: str) -> None:
        shutil.copy(os.path.join(CERTS, f"{name}.key"), self.key)
        shutil.copy(os.path.join(CERTS, f"{name}.pem"), self.cert)

    def endpoint(self) -> str:
        return f"ssl:0:interface=127.0.0.1:privateKey={self.key}:certKey={self.cert}"

    async def open_as(self, host: str) -> WsClient:
        client = await connect(
            self.port, tls=optionsForClientTLS(host, trustRoot=self.ca), host=host
        )
        self.clients.append(client)
        return client

    async def refused_as(self, host: str) -> None:
        with self.assertRaises(ConnectFailedError):
            await self.open_as(host)

    @async_test
    async def test_new_connections_get_the_new_certificate(self) -> None:
        self.start_server(endpoints=[self.endpoint()])
        before = await self.open_as("localhost")
        self.assertEqual((await before.hello())["type"], "welcome")
        await self.refused_as("other.example")
        self.install("other")
        self.assertTrue(self.service.reload_tls())
        after = await self.open_as("other.example")
        self.assertEqual((await after.hello())["type"], "welcome")
        await self.refused_as("localhost")
        # The connection opened before the reload carries on.
        sent = before.send({"type": "heartbeat"})
        self.assertEqual((await before.reply_to(sent["id"]))["type"], "heartbeat")

    @async_test
    async def test_a_failed_reload_keeps_the_current_certificate(self) -> None:
        self.start_server(endpoints=[self.endpoint()])
        with open(self.cert, "w") as half_written:
            half_written.write("-----BEGIN CERTIFICATE-----\nMIIB\n")
        self.assertFalse(self.service.reload_tls())
        client = await self.open_as("localhost")
        self.assertEqual((await client.hello())["type"], "welcome")
        # A key that does not match the certificate is refused too.
        shutil.copy(os.path.join(CERTS, "server.pem"), self.cert)
        shutil.copy(os.path.join(CERTS, "other.key"), self.key)
        self.assertFalse(self.service.reload_tls())
        await self.open_as("localhost")

    @async_test
    async def test_twistd_service_reloads_on_sighup(self) -> None:
        options = cli.Options()
        options.parseOptions(["--endpoint", self.endpoint()])
        service: Any = cli.makeService(options)
        before = signal.getsignal(signal.SIGHUP)
        self.clients = []
        service.startService()
        self.addCleanup(service.stopService)
        self.service = service
        self.port = service.ports[0].getHost().port
        await self.refused_as("other.example")
        self.install("other")
        os.kill(os.getpid(), signal.SIGHUP)
        reloaded: list[WsClient] = []

        for _ in range(50):  # each attempt runs the reactor, which handles the signal
            with contextlib.suppress(ConnectFailedError):
                reloaded.append(await self.open_as("other.example"))
            if reloaded:
                break
        self.assertTrue(reloaded, "SIGHUP did not reload the certificate")
        await service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)  # handler removed
