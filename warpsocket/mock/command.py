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


USAGE = """usage: warpsocket mock SCENARIO [server options]
       warpsocket mock --record OUT --upstream URL [--endpoint ENDPOINT]

Play SCENARIO (a JSON or YAML file, docs/mock.md) as a WarpSocket server; the
server options are those of `warpsocket serve --help` (default endpoint
tcp:8080:interface=127.0.0.1, any page origin admitted). --record runs a proxy
to URL that writes the first session it sees to OUT as a scenario.
"""


def record_parser() -> argparse.ArgumentParser:
    sub = argparse.ArgumentParser(
        prog="warpsocket mock --record",
        description="A proxy to a real server that records a session as a scenario.",
    )
    sub.add_argument("--record", metavar="OUT", required=True, help="the scenario to write")
    sub.add_argument("--upstream", metavar="URL", required=True, help="ws:// or wss:// server")
    sub.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="where clients connect")
    return sub


def main(arguments: Sequence[str]) -> int:
    arguments = list(arguments)
    if any(a == "--record" or a.startswith("--record=") for a in arguments):
        recording = record_parser().parse_args(arguments)
        return record(recording.record, recording.upstream, recording.endpoint)
    if not arguments or arguments[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if arguments else sys.stderr)
        return 0 if arguments else 2
    scenario, rest = arguments[0], arguments[1:]
    if scenario.startswith("-"):
        print(f"warpsocket mock: the SCENARIO file comes first\n{USAGE}", file=sys.stderr)
        return 2
    try:
        load_scenario(scenario)
    except ScenarioError as exc:
        print(f"warpsocket mock: {exc}", file=sys.stderr)
        return 2
    options = list(rest)
    if not any(o == "--endpoint" or o.startswith("--endpoint=") for o in options):
        options += ["--endpoint", DEFAULT_ENDPOINT]
    if not any(o == "--allow-origin" or o.startswith("--allow-origin=") for o in options):
        options += ["--allow-origin", "*"]
    from warpsocket.command_serve import serve

    return serve([*options, "--mock", scenario])


def record(out: str, upstream: str, endpoint_description: str) -> int:
    """Proxy and record until interrupted (Ctrl-C writes the scenario)."""
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
            f"recording {upstream} to {out}: connect to {endpoint_description}; Ctrl-C ends",
            file=sys.stderr,
        )

    try:
        endpoint = serverFromString(reactor, endpoint_description)
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
