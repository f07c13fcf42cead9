"""``warpsocket mock``: play a scenario, or record one (docs/mock.md, docs/cli.md).

``warpsocket mock SCENARIO [server options]`` checks the scenario, then runs
``twistd -n warpsocket --mock SCENARIO`` with the other options (any of
``warpsocket serve --help``); by default it listens on 127.0.0.1:8080 only
and admits pages of any origin, as a development server should.
``warpsocket mock --record OUT --upstream URL`` runs the recording proxy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from warpsocket.mock.scenario import ScenarioError, load_scenario

DEFAULT_ENDPOINT = "tcp:8080:interface=127.0.0.1"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="warpsocket mock",
        description="A WarpSocket server that plays a scenario file (docs/mock.md). "
        "Other options are the server's (warpsocket serve --help).",
    )
    top.add_argument("scenario", metavar="SCENARIO", nargs="?", help="JSON or YAML file")
    top.add_argument("--record", metavar="OUT", help="record a session as a scenario to OUT")
    top.add_argument("--upstream", metavar="URL", help="with --record: the server to record")
    return top


def main(arguments: Sequence[str]) -> int:
    args, rest = parser().parse_known_args(list(arguments))
    if args.record is not None:
        if args.upstream is None or args.scenario is not None:
            print(
                "warpsocket mock: --record OUT needs --upstream URL (and no SCENARIO)",
                file=sys.stderr,
            )
            return 2
        return record(args.record, args.upstream, rest)
    if args.scenario is None:
        print(
            "warpsocket mock: give a SCENARIO file (or --record OUT --upstream URL)",
            file=sys.stderr,
        )
        return 2
    try:
        load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"warpsocket mock: {exc}", file=sys.stderr)
        return 2
    options = list(rest)
    if not any(o == "--endpoint" or o.startswith("--endpoint=") for o in options):
        options += ["--endpoint", DEFAULT_ENDPOINT]
    if not any(o == "--allow-origin" or o.startswith("--allow-origin=") for o in options):
        options += ["--allow-origin", "*"]
    from warpsocket.command import serve

    return serve([*options, "--mock", args.scenario])


def record(out: str, upstream: str, rest: Sequence[str]) -> int:
    """Proxy and record until interrupted (Ctrl-C writes the scenario)."""
    sub = argparse.ArgumentParser(prog="warpsocket mock --record")
    sub.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    args = sub.parse_args(list(rest))
    if not upstream.startswith(("ws://", "wss://")):
        print(
            f"warpsocket mock: --upstream must be a ws:// or wss:// URL, not {upstream!r}",
            file=sys.stderr,
        )
        return 2
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    from warpsocket.mock.record import Recorder, RecordingProxyFactory

    recorder = Recorder(out, reactor)
    factory = RecordingProxyFactory(upstream, recorder)
    failed: list[str] = []

    def cannot_listen(failure: object) -> None:
        failed.append(str(getattr(failure, "value", failure)))
        reactor.stop()

    def listening(port: object) -> None:
        print(
            f"recording {upstream} to {out}: connect to {args.endpoint}; Ctrl-C ends",
            file=sys.stderr,
        )

    try:
        endpoint = serverFromString(reactor, args.endpoint)
    except Exception as exc:
        print(f"warpsocket mock: bad --endpoint: {exc}", file=sys.stderr)
        return 2
    endpoint.listen(factory).addCallbacks(listening, cannot_listen)
    reactor.addSystemEventTrigger("before", "shutdown", recorder.write)
    reactor.run()
    if failed:
        print(f"warpsocket mock: cannot listen: {failed[0]}", file=sys.stderr)
        return 1
    return 0
