"""The client's connection state machine: every transition is explicit."""

from __future__ import annotations

import enum


class ClientState(str, enum.Enum):
    """The client's connection state; ``on_state`` listeners see every
    transition (docs/client.md, "States")."""

    DISCONNECTED = "disconnected"  # not connected, no attempt scheduled (initial)
    CONNECTING = "connecting"  # a connection attempt is under way
    OPEN = "open"  # welcomed: sends go out at once
    RECONNECTING = "reconnecting"  # waiting for the backoff timer
    CLOSED = "closed"  # closed by the application or given up; connect() restarts


ALLOWED: dict[ClientState, frozenset[ClientState]] = {
    ClientState.DISCONNECTED: frozenset(
        {ClientState.CONNECTING, ClientState.RECONNECTING, ClientState.CLOSED}
    ),
    ClientState.CONNECTING: frozenset(
        {ClientState.OPEN, ClientState.DISCONNECTED, ClientState.CLOSED}
    ),
    ClientState.OPEN: frozenset({ClientState.DISCONNECTED, ClientState.CLOSED}),
    ClientState.RECONNECTING: frozenset({ClientState.CONNECTING, ClientState.CLOSED}),
    ClientState.CLOSED: frozenset({ClientState.CONNECTING}),
}


class InvalidTransitionError(RuntimeError):
    pass


def check_transition(old: ClientState, new: ClientState) -> None:
    if new not in ALLOWED[old]:
        raise InvalidTransitionError(f"{old.value} -> {new.value} is not a valid transition")
