"""Certificates that can be replaced while the server runs.

An ``ssl:`` endpoint reads its key and certificate once, when the endpoint
string is parsed. ``ReloadableTLS`` stands in for the endpoint's context
factory: each new TLS connection asks it for the current context, and
``reload()`` parses the same endpoint string again (so the same files, the
same options, the same hardened defaults) and swaps the context in. Existing
connections keep the certificate they were opened with; a reload that fails
(a missing, half-written or mismatched file) keeps the old one and says why.

``twistd warpsocket`` reloads on SIGHUP (``WarpSocketService.reload_tls``).
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Context
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IOpenSSLContextFactory, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from warpsocket import _compat


def _context_factory(endpoint: IStreamServerEndpoint) -> Any:
    # (Raises TLSReloadUnsupportedError if this Twisted keeps them elsewhere.)
    return _compat.tls_context_factory(endpoint)


@implementer(IOpenSSLContextFactory)
class ReloadableTLS:
    log = Logger()

    def __init__(self, reactor: Any, description: str, current: Any) -> None:
        self.reactor = reactor
        self.description = description
        self.current = current

    def getContext(self) -> Context:
        context: Context = self.current.getContext()
        return context

    def reload(self) -> bool:
        """Read the files again; True if the new certificate is in use."""
        try:
            fresh = _context_factory(serverFromString(self.reactor, self.description))
            fresh.getContext()  # builds the context: a bad key or certificate raises here
        except Exception as error:
            self.log.error(
                "TLS reload failed, keeping the current certificate: {error}", error=error
            )
            return False
        self.current = fresh
        self.log.info("TLS certificate reloaded")
        return True


def reloadable_endpoint(
    reactor: Any, description: str
) -> tuple[IStreamServerEndpoint, ReloadableTLS | None]:
    """The endpoint for ``description``, and its reloadable TLS if it has one."""
    endpoint = serverFromString(reactor, description)
    current = _context_factory(endpoint)
    if current is None:
        return endpoint, None
    tls = ReloadableTLS(reactor, description, current)
    _compat.set_tls_context_factory(endpoint, tls)
    return endpoint, tls
