"""Scenario files: parsed and checked whole before anything starts (docs/mock.md).

``load_scenario(path)`` reads JSON (or YAML, with PyYAML: the ``mock``
extra) and returns a ``Scenario``, or raises ``ScenarioError`` naming the
first bad place by its path (``events[2].at: bad duration '1.5x'``). Unknown
keys, wrong types and impossible times are errors, never ignored: a typo in
a scenario must not silently play a different one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from warpsocket.mock.template import ALWAYS, Template, TemplateError, compile_template

T = TypeVar("T")

# Longest time a scenario may name: a day.
MAX_SECONDS = 86_400.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

FAULTS = ("cut", "close", "delay", "stall", "restart", "refuse_tokens", "go_away", "clear")
# Parameters each fault takes, beyond ``fault`` itself.
FAULT_KEYS: dict[str, frozenset[str]] = {
    "cut": frozenset(),
    "close": frozenset({"code", "reason"}),
    "delay": frozenset({"by", "for"}),
    "stall": frozenset({"for"}),
    "restart": frozenset(),
    "refuse_tokens": frozenset({"code", "for", "count"}),
    "go_away": frozenset({"retry_after"}),
    "clear": frozenset(),
}
TIMING_KEYS = frozenset({"at", "every", "count", "times", "on"})
EVENT_KEYS = frozenset({"event", "data", "room", "broadcast", "ack", "ttl"})
# Placeholders each trigger provides (template.py).
TRIGGER_NAMES: dict[str, frozenset[str]] = {
    "start": ALWAYS,
    "connect": ALWAYS | {"session", "user"},
    "join": ALWAYS | {"session", "user", "room"},
    "event": ALWAYS | {"session", "user", "event", "data"},
}


class ScenarioError(ValueError):
    """A scenario (or a control request) that cannot be played; the message names where."""


@dataclass(frozen=True)
class Trigger:
    kind: str  # start | connect | join | event
    name: str | None = None  # the room of ``join``, the event of ``event``

    @property
    def per_session(self) -> bool:
        return self.kind != "start"


@dataclass(frozen=True)
class Timing:
    at: float = 0.0
    every: float | None = None
    count: int | None = None  # firings per trigger (None with ``every``: no end)
    times: int | None = None  # triggers acted on, in all (None: every one)


@dataclass(frozen=True)
class EventAction:
    event: str
    data: Template
    room: str | None = None
    broadcast: bool = False
    ack: bool = False
    ttl: float | None = None


@dataclass(frozen=True)
class FaultAction:
    fault: str
    code: int | None = None
    reason: str = ""
    by: float | None = None
    duration: float | None = None  # ``for``
    count: int | None = None
    retry_after: float = 1.0


@dataclass(frozen=True)
class Rule:
    path: str
    trigger: Trigger
    timing: Timing
    action: EventAction | FaultAction


@dataclass(frozen=True)
class RpcMethod:
    name: str
    result: Template | None = None
    error_code: int | None = None
    error_message: Template | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class Control:
    enabled: bool = True
    faults: frozenset[str] = frozenset(FAULTS)
    emit: bool = True


@dataclass(frozen=True)
class Auth:
    tokens: Mapping[str, str] | None = None  # None: any token


@dataclass(frozen=True)
class Scenario:
    name: str = "scenario"
    events: tuple[Rule, ...] = ()
    faults: tuple[Rule, ...] = ()
    rpc: Mapping[str, RpcMethod] = field(default_factory=dict)
    auth: Auth | None = None
    control: Control = Control()

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.events + self.faults


# ---------------------------------------------------------------- reading


def load_scenario(path: str) -> Scenario:
    """Read and check a scenario file; ScenarioError says what and where."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(4 * 1024 * 1024 + 1)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > 4 * 1024 * 1024:
        raise ScenarioError(f"{path}: larger than 4 MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: not UTF-8") from None
    document = _parse_text(path, text)
    try:
        return parse_scenario(document)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def _parse_text(path: str, text: str) -> Any:
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ScenarioError(
                f"{path}: YAML needs PyYAML (pip install 'warpsocket[mock]'), or use JSON"
            ) from None
        try:
            return yaml.load(text, Loader=_yaml_loader(yaml))
        except yaml.YAMLError as exc:
            raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise ScenarioError(f"{path}: not valid JSON: {exc}") from None


def _yaml_loader(yaml: Any) -> Any:
    """PyYAML's SafeLoader with YAML 1.2 booleans: ``on:`` (a trigger) and
    ``yes``/``no``/``off`` stay strings; only true and false are booleans."""

    class Loader(yaml.SafeLoader):  # type: ignore[misc]
        pass

    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(
        bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    return Loader


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# ---------------------------------------------------------------- checking


def _type(value: Any, kind: type[T], where: str, what: str) -> T:
    # bool is an int in Python, never in a scenario.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ScenarioError(f"{where}: must be {what}, not {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _keys(
    value: Any, where: str, allowed: frozenset[str], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    mapping = _type(value, dict, where or "scenario", "an object")
    for key in mapping:
        if not isinstance(key, str) or key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ScenarioError(f"{_at(where, str(key))}: unknown key (known: {known})")
    for key in required:
        if key not in mapping:
            raise ScenarioError(f"{_at(where, key)}: required")
    return mapping


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def duration(value: Any, where: str, *, positive: bool = False) -> float:
    """``1.5s``, ``500ms``, ``2m``, ``1h`` or a number of seconds."""
    if isinstance(value, bool):
        raise ScenarioError(f"{where}: must be a duration like 1.5s, 500ms or 2m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ScenarioError(f"{where}: bad duration {value!r} (use 1.5s, 500ms, 2m or 1h)")
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        raise ScenarioError(f"{where}: {value!r} is out of range (0 to 24h)")
    if positive and seconds < 0.001:
        raise ScenarioError(f"{where}: must be at least 1ms")
    return seconds


def _count(value: Any, where: str) -> int:
    number = _type(value, int, where, "a positive integer")
    if not 1 <= number <= 1_000_000:
        raise ScenarioError(f"{where}: must be between 1 and 1000000")
    return number


def _name(value: Any, where: str) -> str:
    text = _type(value, str, where, "a string")
    if not 0 < len(text) <= 256:
        raise ScenarioError(f"{where}: must be 1 to 256 characters")
    return text


def parse_scenario(document: Any) -> Scenario:
    top = _keys(
        document,
        "",
        frozenset({"name", "description", "auth", "rpc", "events", "faults", "control"}),
    )
    name = _name(top.get("name", "scenario"), "name")
    if "description" in top:
        _type(top["description"], str, "description", "a string")
    events = tuple(
        _rule(item, f"events[{i}]", EVENT_KEYS, _event_action)
        for i, item in enumerate(_type(top.get("events", []), list, "events", "a list"))
    )
    faults = tuple(
        _rule(
            item,
            f"faults[{i}]",
            frozenset({"fault"}).union(*FAULT_KEYS.values()),
            _fault_rule_action,
        )
        for i, item in enumerate(_type(top.get("faults", []), list, "faults", "a list"))
    )
    rpc = {
        method: _rpc(method, spec, f"rpc.{method}")
        for method, spec in _type(top.get("rpc", {}), dict, "rpc", "an object").items()
    }
    auth = _auth(top["auth"]) if "auth" in top else None
    for rule in faults:
        refuses = isinstance(rule.action, FaultAction) and rule.action.fault == "refuse_tokens"
        if refuses and auth is None:
            raise ScenarioError(f"{rule.path}: refuse_tokens needs an auth section")
    control = _control(top.get("control", True))
    if auth is None:
        # Without an authenticator there is no token to refuse.
        control = dataclasses.replace(control, faults=control.faults - {"refuse_tokens"})
    return Scenario(name, events, faults, rpc, auth, control)


def _trigger(value: Any, where: str) -> Trigger:
    if isinstance(value, str):
        kind, _, rest = value.strip().partition(" ")
        rest = rest.strip()
        if kind == "connect" and not rest:
            return Trigger("connect")
        if kind in ("join", "event") and rest:
            return Trigger(kind, rest)
    elif isinstance(value, dict) and len(value) == 1:
        ((kind, name),) = value.items()
        if kind in ("join", "event"):
            return Trigger(kind, _name(name, _at(where, kind)))
    raise ScenarioError(
        f"{where}: bad trigger {value!r} (use connect, 'join ROOM', 'event NAME', "
        "{join: ROOM} or {event: NAME})"
    )


def _rule(
    value: Any,
    where: str,
    action_keys: frozenset[str],
    action: Callable[[dict[str, Any], str, Trigger], EventAction | FaultAction],
) -> Rule:
    mapping = _keys(value, where, TIMING_KEYS | action_keys)
    trigger = _trigger(mapping["on"], _at(where, "on")) if "on" in mapping else Trigger("start")
    at = duration(mapping.get("at", 0), _at(where, "at"))
    every = (
        duration(mapping["every"], _at(where, "every"), positive=True)
        if "every" in mapping
        else None
    )
    count = _count(mapping["count"], _at(where, "count")) if "count" in mapping else None
    if count is not None and every is None and count > 1:
        raise ScenarioError(f"{_at(where, 'count')}: more than one firing needs every")
    times = _count(mapping["times"], _at(where, "times")) if "times" in mapping else None
    return Rule(where, trigger, Timing(at, every, count, times), action(mapping, where, trigger))


def _event_action(mapping: dict[str, Any], where: str, trigger: Trigger) -> EventAction:
    if "event" not in mapping:
        raise ScenarioError(f"{_at(where, 'event')}: required")
    event = _name(mapping["event"], _at(where, "event"))
    room = _name(mapping["room"], _at(where, "room")) if "room" in mapping else None
    broadcast = _type(
        mapping.get("broadcast", False), bool, _at(where, "broadcast"), "true or false"
    )
    ack = _type(mapping.get("ack", False), bool, _at(where, "ack"), "true or false")
    ttl = duration(mapping["ttl"], _at(where, "ttl"), positive=True) if "ttl" in mapping else None
    if room is not None and broadcast:
        raise ScenarioError(f"{where}: give room or broadcast, not both")
    direct = room is None and not broadcast
    if direct and not trigger.per_session:
        raise ScenarioError(
            f"{where}: an event to the session needs a session trigger (on: connect, join or "
            "event); give room or broadcast: true"
        )
    if ack and not direct:
        raise ScenarioError(f"{_at(where, 'ack')}: only events to the session are acknowledged")
    data = _template(mapping.get("data"), _at(where, "data"), TRIGGER_NAMES[trigger.kind])
    return EventAction(event, data, room, broadcast, ack, ttl)


def _template(value: Any, where: str, allowed: frozenset[str]) -> Template:
    try:
        return compile_template(value, allowed)
    except TemplateError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def _fault_rule_action(mapping: dict[str, Any], where: str, trigger: Trigger) -> FaultAction:
    return fault_action(mapping, where, TIMING_KEYS)


def fault_action(
    mapping: dict[str, Any], where: str, extra: frozenset[str] = frozenset()
) -> FaultAction:
    """The fault of a ``faults`` rule or of a control request (``extra``: its other keys)."""
    if "fault" not in mapping:
        raise ScenarioError(f"{_at(where, 'fault')}: required (one of {', '.join(FAULTS)})")
    kind = mapping["fault"]
    if kind not in FAULTS:
        raise ScenarioError(
            f"{_at(where, 'fault')}: unknown fault {kind!r} (one of {', '.join(FAULTS)})"
        )
    allowed = FAULT_KEYS[kind] | {"fault"} | extra
    for key in mapping:
        if key not in allowed:
            has = ", ".join(sorted(FAULT_KEYS[kind])) or "none"
            raise ScenarioError(f"{_at(where, key)}: not a parameter of {kind} (has: {has})")
    fault = FaultAction(kind)
    if kind == "close":
        code = _type(mapping.get("code"), int, _at(where, "code"), "a close code")
        if not (code == 1000 or 3000 <= code <= 4999):
            raise ScenarioError(
                f"{_at(where, 'code')}: a close code is 1000 or 3000-4999, not {code}"
            )
        reason = _type(mapping.get("reason", ""), str, _at(where, "reason"), "a string")
        if len(reason.encode("utf-8")) > 120:
            raise ScenarioError(f"{_at(where, 'reason')}: longer than 120 bytes")
        fault = FaultAction(kind, code=code, reason=reason)
    elif kind == "delay":
        if "by" not in mapping:
            raise ScenarioError(f"{_at(where, 'by')}: required")
        by = duration(mapping["by"], _at(where, "by"), positive=True)
        for_ = (
            duration(mapping["for"], _at(where, "for"), positive=True) if "for" in mapping else None
        )
        fault = FaultAction(kind, by=by, duration=for_)
    elif kind == "stall":
        if "for" not in mapping:
            raise ScenarioError(f"{_at(where, 'for')}: required")
        fault = FaultAction(
            kind, duration=duration(mapping["for"], _at(where, "for"), positive=True)
        )
    elif kind == "refuse_tokens":
        code = _type(mapping.get("code", 4100), int, _at(where, "code"), "4100 or 4101")
        if code not in (4100, 4101):
            raise ScenarioError(f"{_at(where, 'code')}: must be 4100 or 4101, not {code}")
        if "for" in mapping and "count" in mapping:
            raise ScenarioError(f"{where}: give for or count, not both")
        for_ = (
            duration(mapping["for"], _at(where, "for"), positive=True) if "for" in mapping else None
        )
        count = _count(mapping["count"], _at(where, "count")) if "count" in mapping else None
        if for_ is None and count is None:
            count = 1
        fault = FaultAction(kind, code=code, duration=for_, count=count)
    elif kind == "go_away":
        retry = duration(mapping.get("retry_after", 1.0), _at(where, "retry_after"), positive=True)
        fault = FaultAction(kind, retry_after=retry)
    return fault


def _rpc(method: str, value: Any, where: str) -> RpcMethod:
    _name(method, where)
    mapping = _keys(value, where, frozenset({"result", "error", "delay"}))
    if ("result" in mapping) == ("error" in mapping):
        raise ScenarioError(f"{where}: give result or error (one of them)")
    delay = duration(mapping.get("delay", 0), _at(where, "delay"))
    names = TRIGGER_NAMES["event"]
    if "result" in mapping:
        return RpcMethod(
            method, result=_template(mapping["result"], _at(where, "result"), names), delay=delay
        )
    error_where = _at(where, "error")
    error = _keys(mapping["error"], error_where, frozenset({"code", "message"}), ("code",))
    code = _type(error["code"], int, _at(error_where, "code"), "an error code")
    if not 4000 <= code <= 4999:
        raise ScenarioError(f"{_at(error_where, 'code')}: an error code is 4000-4999, not {code}")
    message = _type(error.get("message", ""), str, _at(error_where, "message"), "a string")
    return RpcMethod(
        method,
        error_code=code,
        error_message=_template(message, _at(error_where, "message"), names),
        delay=delay,
    )


def _auth(value: Any) -> Auth:
    mapping = _keys(value if value is not None else {}, "auth", frozenset({"tokens"}))
    if "tokens" not in mapping:
        return Auth(None)
    tokens = _type(mapping["tokens"], dict, "auth.tokens", "an object (token: user)")
    for token, user in tokens.items():
        if not isinstance(token, str) or not token:
            raise ScenarioError(f"auth.tokens.{token}: a token is a non-empty string")
        _name(user, f"auth.tokens.{token}")
    return Auth(dict(tokens))


def _control(value: Any) -> Control:
    if isinstance(value, bool):
        return Control(enabled=value)
    mapping = _keys(value, "control", frozenset({"faults", "emit"}))
    faults = frozenset(FAULTS)
    if "faults" in mapping:
        listed = _type(mapping["faults"], list, "control.faults", "a list of fault names")
        for i, kind in enumerate(listed):
            if kind not in FAULTS:
                raise ScenarioError(f"control.faults[{i}]: unknown fault {kind!r}")
        faults = frozenset(listed)
    emit = _type(mapping.get("emit", True), bool, "control.emit", "true or false")
    return Control(True, faults, emit)


def emit_action(mapping: dict[str, Any], where: str) -> tuple[EventAction, str | None]:
    """An event of a control ``emit`` request: to a room, to all, or to one session."""
    _keys(
        mapping,
        where,
        frozenset({"event", "data", "room", "broadcast", "session", "ack"}),
        ("event",),
    )
    session = _name(mapping["session"], _at(where, "session")) if "session" in mapping else None
    trigger = Trigger("connect") if session is not None else Trigger("start")
    action = _event_action({k: v for k, v in mapping.items() if k != "session"}, where, trigger)
    if session is not None and (action.room is not None or action.broadcast):
        raise ScenarioError(f"{where}: give session, room or broadcast (one of them)")
    return action, session
