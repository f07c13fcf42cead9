"""Registers ``twistd warpsocket``; everything else lives in warpsocket.server.cli."""

from twisted.application.service import ServiceMaker

warpsocket = ServiceMaker(
    "WarpSocket",
    "warpsocket.server.cli",
    "Reliable WebSocket server: resume, acks, dedup, rooms.",
    "warpsocket",
)
