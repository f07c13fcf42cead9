#!/usr/bin/env python3
"""Bytes on the wire and encode/decode cost of the three codecs, side by side.

    python bench/codecs.py [--repeat N]

For each sample envelope: the frame size of JSON, MessagePack and Protobuf,
and the median microseconds to encode and to decode (with validation, as the
server does) with warpsocket.protocol's codecs in this interpreter. Ratios are
against JSON. See docs/performance.md ("Codecs").
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from functools import partial
from typing import Any

from warpsocket.protocol.codecs import JsonCodec, MsgpackCodec
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.protocol.protobuf import ProtobufCodec

T = 1764300000000


def samples() -> dict[str, Envelope]:
    records = [
        {"id": i, "name": f"user-{i}", "score": i * 1.5, "active": i % 2 == 0, "tags": ["a", "b"]}
        for i in range(200)
    ]
    return {
        "ack": Envelope(type=MessageType.ACK, id="n1-42", timestamp=T, ref="m-abcdefghijklmnop"),
        "chat event": Envelope(
            type=MessageType.EVENT,
            id="n1-43",
            timestamp=T,
            event="say",
            stream="room:lobby",
            offset=1234,
            epoch="e-AbCdEfGh",
            data={"user": "ada", "text": "hello, how is everyone doing today?"},
        ),
        "200 records": Envelope(
            type=MessageType.EVENT, id="n1-44", timestamp=T, event="page", data=records
        ),
        "1,000 integers": Envelope(
            type=MessageType.EVENT, id="n1-45", timestamp=T, event="series", data=list(range(1000))
        ),
        "1,000 floats": Envelope(
            type=MessageType.EVENT,
            id="n1-46",
            timestamp=T,
            event="series",
            data=[i / 7 for i in range(1000)],
        ),
    }


def cost(function: Any, repeat: int) -> float:
    """Median microseconds per call over ``repeat`` timing runs."""
    timer = timeit.Timer(function)
    number, _ = timer.autorange()
    runs = timer.repeat(repeat=repeat, number=number)
    return statistics.median(runs) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    codecs = {"json": JsonCodec(), "msgpack": MsgpackCodec(), "protobuf": ProtobufCodec()}
    print(
        f"{'envelope':<15} {'codec':<9} {'bytes':>7} {'x json':>7} "
        f"{'encode us':>10} {'x json':>7} {'decode us':>10} {'x json':>7}"
    )
    for name, envelope in samples().items():
        base: dict[str, float] = {}
        for label, codec in codecs.items():
            frame = codec.encode(envelope)
            assert codec.decode(frame, codec.binary) == envelope
            size = float(len(frame))
            encode = cost(partial(codec.encode, envelope), args.repeat)
            decode = cost(partial(codec.decode, frame, codec.binary), args.repeat)
            if label == "json":
                base = {"size": size, "encode": encode, "decode": decode}
            print(
                f"{name:<15} {label:<9} {int(size):>7} {size / base['size']:>7.2f} "
                f"{encode:>10.1f} {encode / base['encode']:>7.2f} "
                f"{decode:>10.1f} {decode / base['decode']:>7.2f}"
            )


if __name__ == "__main__":
    main()
