"""An offline queue that survives a client process restart.

A JSON-lines journal: one ``add`` record per acknowledged message when it is
sent, one ``done`` record when it has an outcome. Loading replays the
journal, keeps what has no outcome and compacts the file. Restored messages
keep their ids, so the server's deduplication recognises any that it had
already handled before the restart.
"""

from __future__ import annotations

import json
import os
from typing import Any

from warpsocket.protocol.envelope import Envelope


class DurableQueue:
    def __init__(self, path: str, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._file: Any = None

    def _append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def add(self, envelope: Envelope, priority: int, deadline_ms: int | None) -> None:
        self._append(
            {
                "op": "add",
                "envelope": envelope.to_wire(),
                "priority": priority,
                "deadline": deadline_ms,
            }
        )

    def done(self, ident: str) -> None:
        self._append({"op": "done", "id": ident})

    def load(self) -> list[tuple[Envelope, int, int | None]]:
        """What is still pending, in the order it was added; compacts the journal."""
        pending: dict[str, dict[str, Any]] = {}
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as journal:
                for line in journal:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # a torn last line from a crash
                    if record.get("op") == "add":
                        pending[record["envelope"]["id"]] = record
                    elif record.get("op") == "done":
                        pending.pop(record.get("id"), None)
        temporary = self.path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as compacted:
            for record in pending.values():
                compacted.write(json.dumps(record, separators=(",", ":")) + "\n")
        os.replace(temporary, self.path)
        return [
            (Envelope.from_wire(r["envelope"]), int(r.get("priority", 0)), r.get("deadline"))
            for r in pending.values()
        ]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
