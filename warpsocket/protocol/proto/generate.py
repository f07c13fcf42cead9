"""Compile warpsocket.proto into schema.py (the serialized descriptor).

    python -m warpsocket.protocol.proto.generate

Needs ``grpcio-tools`` (in the ``test`` extra) for ``protoc``; the package
itself only needs the ``protobuf`` runtime. tests/test_protobuf.py checks
that schema.py is what the .proto compiles to.
"""

from __future__ import annotations

import base64
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "warpsocket.proto"
SCHEMA = HERE / "schema.py"

HEADER = '''"""Generated from warpsocket.proto by generate.py: do not edit."""

import base64

# The FileDescriptorProto of warpsocket.proto, serialized (base64).
SERIALIZED = base64.b64decode(
'''


def compile_proto() -> bytes:
    """The serialized FileDescriptorProto that protoc makes of the schema."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "set.bin"
        status = protoc.main(["protoc", f"-I{HERE}", f"--descriptor_set_out={out}", str(PROTO)])
        if status != 0:
            raise RuntimeError(f"protoc failed on {PROTO}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    (proto,) = files
    return bytes(proto.SerializeToString())


def render(serialized: bytes) -> str:
    text = base64.b64encode(serialized).decode("ascii")
    lines = [f'    "{text[i : i + 88]}"\n' for i in range(0, len(text), 88)]
    return HEADER + "".join(lines) + ")\n"


def main() -> int:
    SCHEMA.write_text(render(compile_proto()), encoding="utf-8")
    print(f"wrote {SCHEMA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
