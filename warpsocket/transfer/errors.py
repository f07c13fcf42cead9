"""The one exception of chunked transfers, on both sides."""

from __future__ import annotations

from warpsocket.protocol.codes import ErrorCode


class TransferError(Exception):
    """A transfer ended without its bytes: ``code`` says why (4620 corrupt,
    4621 cancelled, 4622 unknown, 4623 too large, 4624 busy, 4625 flow, or
    another code of protocol.md section 10 such as 4102 forbidden)."""

    def __init__(self, code: ErrorCode | int, message: str) -> None:
        super().__init__(f"{int(code)}: {message}")
        self.code = code
        self.message = message
