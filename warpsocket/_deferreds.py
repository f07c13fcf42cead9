"""Calling application code that may be plain, Deferred-returning or ``async def``."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed


def invoke(func: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Call ``func``; always return a Deferred (failed if it raised)."""
    try:
        result = func(*args)
    except Exception:
        return fail()
    if isinstance(result, Deferred):
        return result
    if inspect.isawaitable(result):
        return Deferred.fromCoroutine(_await(result))
    return succeed(result)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
