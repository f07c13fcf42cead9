"""Scenario files and templates: what is accepted, and bad files refused whole
with an error naming the place, by ``load_scenario``, by ``warpsocket mock``
and by ``twistd warpsocket --mock`` (subprocesses, nothing started)."""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

from incremental import Version
from twisted.application.service import Application
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import ILogObserver
from twisted.python.usage import UsageError
from twisted.trial import unittest

from tests.helpers.processes import ServerProcess
from tests.wsclient import async_test, http_get, sleep
from twisted import version as twisted_version
from warpsocket.mock import MockService
from warpsocket.mock.scenario import (
    FaultAction,
    ScenarioError,
    duration,
    load_scenario,
    parse_scenario,
)
from warpsocket.mock.template import TemplateError, compile_template
from warpsocket.server.cli import Options, makeService

HERE = os.path.join(os.path.dirname(__file__), "mock_scenarios")
BIN = os.path.dirname(sys.executable)


class FixtureTests(unittest.TestCase):
    def test_the_yaml_fixture_has_every_fault(self) -> None:
        scenario = load_scenario(os.path.join(HERE, "every_fault.yaml"))
        kinds = {r.action.fault for r in scenario.faults if isinstance(r.action, FaultAction)}
        self.assertEqual(
            kinds,
            {"cut", "close", "delay", "stall", "restart", "refuse_tokens", "go_away", "clear"},
        )
        self.assertEqual(
            scenario.auth and dict(scenario.auth.tokens or {}),
            {
                "tok-alice": "alice",
                "tok-bob": "bob",
            },
        )
        # YAML's "on" is a key here, not the boolean YAML 1.1 makes of it.
        self.assertEqual(scenario.events[0].trigger.kind, "connect")
        self.assertEqual(scenario.events[1].trigger.name, "feed")
        self.assertEqual(scenario.rpc["slow"].delay, 0.2)

    def test_the_json_fixture(self) -> None:
        scenario = load_scenario(os.path.join(HERE, "every_fault.json"))
        self.assertEqual(scenario.events[0].timing.every, 0.1)
        self.assertEqual(scenario.faults[0].timing.at, 3600)
        self.assertEqual(scenario.control.faults, frozenset({"cut", "stall"}))
        self.assertFalse(scenario.control.emit)

    def test_durations(self) -> None:
        self.assertEqual(duration("1.5s", "x"), 1.5)
        self.assertEqual(duration("500ms", "x"), 0.5)
        self.assertEqual(duration("2m", "x"), 120)
        self.assertEqual(duration(3, "x"), 3.0)
        for bad in ("1.5x", "-1s", "s", "", "1e3s", True, None, [1], float("nan"), "25h", 1e9):
            with self.assertRaises(ScenarioError, msg=repr(bad)):
                duration(bad, "x")


def refused(document: Any) -> str:
    try:
        parse_scenario(document)
    except ScenarioError as exc:
        return str(exc)
    raise AssertionError(f"accepted: {document!r}")


class ValidationTests(unittest.TestCase):
    def test_errors_name_the_place(self) -> None:
        cases: list[tuple[Any, str]] = [
            ([], "scenario: must be an object"),
            ({"evnts": []}, "evnts: unknown key"),
            (
                {"events": [{"event": "x", "room": "r", "colour": 1}]},
                "events[0].colour: unknown key",
            ),
            ({"events": [{"at": "1.5x", "event": "x", "room": "r"}]}, "events[0].at: bad duration"),
            (
                {"events": [{"at": -1, "event": "x", "room": "r"}]},
                "events[0].at: -1 is out of range",
            ),
            ({"events": [{"every": 0, "event": "x", "room": "r"}]}, "events[0].every: must be at"),
            (
                {"events": [{"count": 3, "event": "x", "room": "r"}]},
                "events[0].count: more than one",
            ),
            ({"events": [{"room": "r"}]}, "events[0].event: required"),
            ({"events": [{"event": 5, "room": "r"}]}, "events[0].event: must be a string"),
            ({"events": [{"event": "x"}]}, "events[0]: an event to the session needs"),
            ({"events": [{"event": "x", "room": "r", "broadcast": True}]}, "room or broadcast"),
            ({"events": [{"on": "lunch", "event": "x"}]}, "events[0].on: bad trigger"),
            (
                {"events": [{"on": {"join": 3}, "event": "x"}]},
                "events[0].on.join: must be a string",
            ),
            (
                {"events": [{"event": "x", "room": "r", "data": "{{session}}"}]},
                "events[0].data: '{{session}}' is not available",
            ),
            (
                {"events": [{"on": "connect", "event": "x", "data": {"a": ["{{os.system}}"]}}]},
                "events[0].data: unknown placeholder",
            ),
            ({"faults": [{"fault": "explode"}]}, "faults[0].fault: unknown fault 'explode'"),
            ({"faults": [{"fault": "stall"}]}, "faults[0].for: required"),
            ({"faults": [{"fault": "cut", "for": "1s"}]}, "faults[0].for: not a parameter of cut"),
            ({"faults": [{"fault": "close", "code": 1006}]}, "faults[0].code: a close code is"),
            (
                {"faults": [{"fault": "close", "code": "4000"}]},
                "faults[0].code: must be a close code",
            ),
            ({"faults": [{"fault": "refuse_tokens"}]}, "faults[0]: refuse_tokens needs an auth"),
            (
                {"auth": {}, "faults": [{"fault": "refuse_tokens", "code": 4102}]},
                "faults[0].code: must be 4100 or 4101",
            ),
            ({"rpc": {"m": {}}}, "rpc.m: give result or error"),
            ({"rpc": {"m": {"error": {"code": 200}}}}, "rpc.m.error.code: an error code is"),
            ({"rpc": {"m": {"error": {"message": "x"}}}}, "rpc.m.error.code: required"),
            ({"rpc": {"m": {"result": 1, "delay": "soon"}}}, "rpc.m.delay: bad duration"),
            ({"control": {"faults": ["cut", "nuke"]}}, "control.faults[1]: unknown fault"),
            ({"control": "yes"}, "control: must be an object"),
            ({"auth": {"tokens": {"t": 1}}}, "auth.tokens.t: must be a string"),
        ]
        for document, words in cases:
            self.assertIn(words, refused(document), document)

    def test_a_file_that_is_not_json_or_yaml(self) -> None:
        path = self.mktemp()
        for suffix, text, words in [
            (".json", "{not json", "not valid JSON"),
            (".json", '{"events": NaN}', "not valid JSON"),
            (".yaml", "events: [unclosed", "not valid YAML"),
            (".json", '{"events": [{"at": "1.5x", "event": "e", "room": "r"}]}', "events[0].at"),
        ]:
            with open(path + suffix, "w") as handle:
                handle.write(text)
            with self.assertRaises(ScenarioError) as error:
                load_scenario(path + suffix)
            self.assertIn(path + suffix, str(error.exception))
            self.assertIn(words, str(error.exception))
        with self.assertRaises(ScenarioError) as error:
            load_scenario(path + ".missing")
        self.assertIn("cannot read", str(error.exception))


class TemplateTests(unittest.TestCase):
    NAMES = frozenset({"seq", "now", "session", "user", "room", "event", "data"})

    def render(self, value: Any, **values: Any) -> Any:
        return compile_template(value, self.NAMES).render(values)

    def test_a_whole_placeholder_keeps_the_type(self) -> None:
        self.assertEqual(self.render("{{seq}}", seq=3), 3)
        self.assertEqual(self.render("{{ data }}", data={"a": [1]}), {"a": [1]})
        self.assertEqual(self.render("{{data.a.1}}", data={"a": [1, 2]}), 2)
        self.assertIsNone(self.render("{{data.missing.deeper}}", data={"a": 1}))

    def test_inside_text(self) -> None:
        self.assertEqual(self.render("n={{seq}} by {{user}}", seq=2, user="al"), "n=2 by al")
        self.assertEqual(self.render("{{data}}!", data={"a": 1}), '{"a":1}!')
        self.assertEqual(
            self.render({"k{{seq}}": ["{{seq}}", 5, None]}, seq=1), {"k1": [1, 5, None]}
        )

    def test_nothing_but_names_and_paths(self) -> None:
        for bad in ("{{__class__}}", "{{data.__class__.x()}}", "{{1+1}}", "{{seq.x}}", "{{x}}"):
            with self.assertRaises(TemplateError, msg=bad):
                compile_template(bad, self.NAMES)
        # Attribute-looking paths walk dict keys only.
        self.assertIsNone(self.render("{{data.keys}}", data={"a": 1}))


class CommandLineTests(unittest.TestCase):
    """Bad scenarios stop the command before anything listens."""

    timeout = 60

    def free_port(self) -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        return port

    def bad_file(self) -> str:
        path = self.mktemp() + ".json"
        with open(path, "w") as handle:
            json.dump({"events": [{"at": "soon", "event": "x", "room": "r"}]}, handle)
        return path

    def assert_not_listening(self, port: int) -> None:
        with socket.socket() as probe:
            self.assertNotEqual(probe.connect_ex(("127.0.0.1", port)), 0)

    @async_test
    async def test_warpsocket_mock_refuses_a_bad_scenario(self) -> None:
        port = self.free_port()
        path = self.bad_file()
        _out, err, code = await getProcessOutputAndValue(
            os.path.join(BIN, "warpsocket"),
            ["mock", path, "--endpoint", f"tcp:{port}:interface=127.0.0.1"],
            env=dict(os.environ),
            reactor=reactor,
        )
        self.assertEqual(code, 2)
        self.assertIn(f"{path}: events[0].at: bad duration 'soon'".encode(), err)
        self.assert_not_listening(port)

    @async_test
    async def test_twistd_mock_refuses_a_bad_scenario(self) -> None:
        port = self.free_port()
        path = self.bad_file()
        out, err, code = await getProcessOutputAndValue(
            os.path.join(BIN, "twistd"),
            ["-n", "--pidfile=", "warpsocket", "--endpoint", f"tcp:{port}", "--mock", path],
            env=dict(os.environ),
            reactor=reactor,
        )
        # twistd itself decides the status of a usage error: Twisted before
        # 26.10 exits 0 (warpsocket mock and warpsocket serve say 2 themselves).
        if twisted_version >= Version("twisted", 26, 10, 0):
            self.assertNotEqual(code, 0)
        self.assertIn(b"events[0].at: bad duration 'soon'", out + err)
        self.assert_not_listening(port)

    @async_test
    async def test_record_needs_an_upstream(self) -> None:
        _out, err, code = await getProcessOutputAndValue(
            os.path.join(BIN, "warpsocket"),
            ["mock", "--record", self.mktemp()],
            env=dict(os.environ),
            reactor=reactor,
        )
        self.assertEqual(code, 2)
        self.assertIn(b"--upstream", err)


class MockCommandServesTests(unittest.TestCase):
    """``warpsocket mock SCENARIO``: a server with the scenario and the control endpoint."""

    timeout = 60

    async def until_serving(self, process: ServerProcess, port: int) -> None:
        give_up = reactor.seconds() + 30
        while True:
            if process.ended.called:
                self.fail(f"exited early:\n{process.output.decode()}")
            try:
                code, _, _ = await http_get(port, "/healthz")
            except (ConnectError, OSError):
                code = 0
            if code == 200:
                return
            if reactor.seconds() > give_up:
                self.fail(f"did not come up:\n{process.output.decode()}")
            await sleep(0.1)

    @async_test
    async def test_mock_serves_the_scenario(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        process = ServerProcess()
        cwd = self.mktemp()
        os.makedirs(cwd)
        script = os.path.join(BIN, "warpsocket")
        scenario = os.path.join(HERE, "every_fault.json")
        reactor.spawnProcess(
            process,
            script,
            [script, "mock", scenario, "--endpoint", f"tcp:{port}:interface=127.0.0.1"],
            env=dict(os.environ),
            path=cwd,
        )

        async def stop() -> None:
            if not process.ended.called:
                process.transport.signalProcess("KILL")  # type: ignore[union-attr]
                await process.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        await self.until_serving(process, port)
        code, body, _ = await http_get(port, "/mock/state")
        self.assertEqual(code, 200)
        state = json.loads(body)
        self.assertEqual(state["scenario"], "every fault (JSON)")
        self.assertEqual(state["control"], {"faults": ["cut", "stall"], "emit": False})
        process.transport.signalProcess("TERM")  # type: ignore[union-attr]
        await process.ended


class TwistdOptionsTests(unittest.TestCase):
    def options(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(["--endpoint", "tcp:0:interface=127.0.0.1", *args])  # type: ignore[no-untyped-call]
        return options

    def test_mock_builds_a_mock_service_with_the_http_api(self) -> None:
        keys = self.mktemp()
        with open(keys, "w") as handle:
            handle.write("a-key-of-enough-length\n")
        scenario = os.path.join(HERE, "every_fault.yaml")
        service = makeService(self.options("--mock", scenario, "--api-key-file", keys))
        self.assertIsInstance(service, MockService)
        assert isinstance(service, MockService)
        self.assertEqual(service.scenario.name, "every fault")
        self.assertTrue(service.options.open_rooms)
        root: Any = service.current.site.resource
        self.assertIn(b"mock", root.children)
        self.assertIn(b"api", root.children)

    def test_mock_keeps_the_inspector_and_json_logs(self) -> None:
        """--inspect-key-file and --log-format json work in mock mode too."""
        key = self.mktemp()
        with open(key, "w") as handle:
            handle.write("an-inspector-key-of-enough-length\n")
        scenario = os.path.join(HERE, "every_fault.yaml")
        options = self.options(
            "--mock", scenario, "--inspect-key-file", key, "--log-format", "json"
        )
        service = makeService(options)
        assert isinstance(service, MockService)
        root: Any = service.current.site.resource
        self.assertIn(b"inspect", root.children)
        # twistd takes the application's log observer: the JSON one.
        application = Application("mock")
        service.setServiceParent(application)
        self.assertIsNotNone(application.getComponent(ILogObserver))

    def test_mock_refuses_what_a_restart_cannot_keep(self) -> None:
        scenario = os.path.join(HERE, "every_fault.yaml")
        with self.assertRaises(UsageError) as error:
            self.options("--mock", scenario, "--redis", "redis://127.0.0.1:1/0")
        self.assertIn("--mock serves in memory", str(error.exception))
        with self.assertRaises(UsageError):
            self.options("--mock", scenario, "--metrics-endpoint", "tcp:0")
        with self.assertRaises(UsageError) as error:
            self.options("--mock", os.path.join(HERE, "nothing.yaml"))
        self.assertIn("cannot read", str(error.exception))
