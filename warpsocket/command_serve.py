"""``warpsocket serve``: the server in the foreground (docs/cli.md).

Below both ``warpsocket`` (command.py) and ``warpsocket mock``
(mock/command.py), which run it with their options.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def serve(options: Sequence[str]) -> int:
    """``twistd --nodaemon --pidfile= warpsocket OPTIONS``: in the foreground,
    without a pid file; twistd exits itself on a usage error."""
    from twisted.python import usage
    from twisted.scripts.twistd import run as twistd

    from warpsocket.server.cli import Options

    class Syntax(Options):
        def postOptions(self) -> None:
            pass  # names and values only: twistd runs the full check

    try:
        # Twisted before 26.10 exits 0 on an unknown plugin option: say no here.
        Syntax().parseOptions(list(options))  # type: ignore[no-untyped-call]
    except usage.UsageError as error:
        print(f"warpsocket serve: {error}", file=sys.stderr)
        return 1
    sys.argv = ["warpsocket serve", "--nodaemon", "--pidfile=", "warpsocket", *options]
    twistd()
    return 0  # OK (command.py's exit codes)
