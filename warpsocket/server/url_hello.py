"""The hello carried in the upgrade request (protocol.md 4.5), read and checked
before the upgrade is answered.

A client without credentials may put its whole ``hello`` envelope, as JSON
text, in the query parameter ``hello`` of the WebSocket URL; the server then
answers the ``101`` and the ``welcome`` in one write, and the client saves a
round trip. URLs are logged, so a hello that carries a credential (a token,
a resume token, a session to resume) is refused here, as is anything that is
not one valid hello envelope of at most ``MAX_BYTES``.
"""

from __future__ import annotations

from urllib.parse import unquote_plus, unquote_to_bytes

from warpsocket.protocol.codecs import Codec
from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.middleware import Reject

PARAMETER = "hello"
# Of JSON text, after percent-decoding: what proxies pass in a request line.
MAX_BYTES = 2048
# Never in a URL: ``session`` is checked apart (``null`` is allowed).
_CREDENTIALS = ("token", "resume_token")


class UrlHello:
    """A checked hello of the upgrade request, and the JSON text it came as."""

    __slots__ = ("envelope", "text")

    def __init__(self, envelope: Envelope, text: bytes) -> None:
        self.envelope = envelope
        self.text = text


def _refuse(why: str) -> Reject:
    return Reject(ErrorCode.BAD_ENVELOPE, f"hello in the URL: {why}")


def _values(query: str) -> list[str]:
    """The raw (still percent-encoded) values of every ``hello`` parameter."""
    found = []
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if name == PARAMETER or (("%" in name or "+" in name) and unquote_plus(name) == PARAMETER):
            found.append(value)
    return found


def read_url_hello(uri: str, json_codec: Codec) -> UrlHello | None:
    """The hello in the query of the request target ``uri``; None without one.

    Raises ``Reject(BAD_ENVELOPE)`` for more than one ``hello`` parameter, or
    one that is too long, not one valid hello envelope (decoded by
    ``json_codec``, with its limits) or that carries a credential.
    """
    _, has_query, query = uri.partition("?")
    if not has_query or (PARAMETER not in query and "%" not in query):
        return None  # (the common upgrade: no query, or none that can name it)
    values = _values(query.partition("#")[0])
    if not values:
        return None
    if len(values) > 1:
        raise _refuse("more than one hello parameter")
    text = unquote_to_bytes(values[0].replace("+", " "))
    if len(text) > MAX_BYTES:
        raise _refuse(f"{len(text)} bytes, over {MAX_BYTES}")
    try:
        envelope = json_codec.decode(text, False)
    except ProtocolError as error:
        raise _refuse(error.message) from None
    if envelope.type is not MessageType.HELLO:
        raise _refuse(f"type {envelope.type.value!r}, not 'hello'")
    data = envelope.data
    if isinstance(data, dict):
        for key in _CREDENTIALS:
            if key in data:
                raise _refuse(f"data.{key} never goes in a URL: send the hello as a frame")
        if data.get("session") is not None:
            raise _refuse("a resume (data.session) never goes in a URL: send the hello as a frame")
    return UrlHello(envelope, text)
