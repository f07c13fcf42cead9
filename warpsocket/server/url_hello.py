"""The hello carried in the upgrade request (protocol.md 4.5), read and checked
before the upgrade is answered.

A client without credentials may put its whole ``hello`` envelope, its JSON
text in base64url, in the query parameter ``hello`` of the WebSocket URL; the
server then answers the ``101`` and the ``welcome`` in one write, and the
client saves a round trip. URLs are logged, so a hello that carries a
credential (a token, a resume token, a session to resume) is refused here,
as is anything that is not one valid hello envelope of at most ``MAX_BYTES``.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from collections.abc import Mapping

from warpsocket.protocol.codecs import Codec
from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.middleware import Reject

PARAMETER = "hello"
# Of JSON text, after base64url decoding: what proxies pass in a request line.
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


def read_url_hello(params: Mapping[str, list[str]], json_codec: Codec) -> UrlHello | None:
    """The hello of the request's query parameters (``params``: decoded, as
    Autobahn's ``parse_qs`` gives them, which drops empty values); None
    without one.

    Raises ``Reject(BAD_ENVELOPE)`` for more than one ``hello`` parameter, or
    one that is not base64url, too long, not one valid hello envelope
    (decoded by ``json_codec``, with its limits) or carries a credential.
    """
    values = params.get(PARAMETER)
    if not values:
        return None
    if len(values) > 1:
        raise _refuse("more than one hello parameter")
    value = values[0]
    if len(value) > (MAX_BYTES + 2) // 3 * 4 + 2:
        raise _refuse(f"over {MAX_BYTES} bytes")
    if "+" in value or "/" in value:  # (the standard alphabet's, which b64decode takes too)
        raise _refuse("not base64url")
    try:
        # validate: a character outside the alphabet is an error, not skipped.
        text = b64decode(value + "=" * (-len(value) % 4), b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise _refuse("not base64url") from None
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
