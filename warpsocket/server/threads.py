"""Calling the hub from other threads: run on the reactor, hand back a Future.

Every write must happen on the reactor thread (frames would interleave
otherwise). A hub method called from another thread is therefore run there
with ``blockingCallFromThread``: the calling thread waits one turn of the
reactor loop for the method itself, so calls from one thread keep their
order and a thread cannot queue work faster than the reactor takes it.
What the method returns comes back as is, except a Deferred: waiting for it
could take as long as a client's acknowledgement, and a Deferred is no use
outside the reactor thread, so the caller gets a
``concurrent.futures.Future`` of its result instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread

P = ParamSpec("P")
R = TypeVar("R")


def future_of(deferred: Deferred[Any]) -> Future[Any]:
    """A Future settled with the Deferred's result or exception (on the reactor
    thread, where its done-callbacks run too). The Deferred's failure is
    consumed: the Future carries it."""
    future: Future[Any] = Future()
    future.set_running_or_notify_cancel()

    def failed(failure: Failure) -> None:
        future.set_exception(failure.value)

    deferred.addCallbacks(future.set_result, failed)
    return future


def _run_here(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    result = method(*args, **kwargs)
    if isinstance(result, Deferred):
        # A Future, not the Deferred: blockingCallFromThread returns at once.
        return future_of(result)
    return result


def threadsafe(method: Callable[P, R]) -> Callable[P, R]:
    """On the reactor thread, ``method`` itself. On any other thread: run on
    the reactor thread; a Deferred it returns becomes a ``Future`` of its result.

    The declared return type stays the reactor thread's (a Deferred): typed
    callers on other threads treat it as a ``concurrent.futures.Future``.
    The first argument must have a ``reactor`` (the hub).
    """

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if isInIOThread():
            return method(*args, **kwargs)
        reactor = args[0].reactor  # type: ignore[attr-defined]
        call: Any = blockingCallFromThread
        return cast(R, call(reactor, _run_here, method, *args, **kwargs))

    return wrapper
