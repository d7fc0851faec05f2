"""Retrying a call the agent never answered, when running it twice cannot hurt.

A transport failure before an answer (the connection refused or reset, a kept-alive connection the agent
closed, the request not fully sent) leaves the registry not knowing whether the tool ran. A tool whose
signed annotations say it is read-only (``readOnlyHint``) or idempotent (``idempotentHint``) is sent
again, a few times with exponential backoff and jitter (tenacity); any other tool is never retried: its
caller hears ``target-unavailable`` and decides. Resource reads, prompt gets and completions are reads by
MCP's definition, so they are retried too. Timeouts are not retried: the call's time is spent.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio
import httpx2
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

T = TypeVar("T")
# Failures that come before any answer from the agent; a read or protocol error mid-answer included,
# since for a tool safe to repeat an answer cut short is as good as none.
TRANSPORT_FAILURES = (httpx2.ConnectError, httpx2.ReadError, httpx2.WriteError, httpx2.RemoteProtocolError)
PAUSE, JITTER, LONGEST = 0.05, 0.05, 1.0  # seconds: the first pause (doubling after each failure), its jitter, the cap


def safe_to_repeat(annotations: Mapping[str, Any] | None) -> bool:
    """Does the tool say that calling it twice does no more than calling it once?"""
    annotations = annotations or {}
    return annotations.get("readOnlyHint") is True or annotations.get("idempotentHint") is True


async def send(request: Callable[[], Awaitable[T]], *, repeatable: bool, attempts: int) -> T:
    """``request()``, sent up to ``attempts`` times on transport failures when ``repeatable``, else once.

    The first send is a plain call: most are answered, and tenacity (tens of microseconds to set up) is
    only needed once one is not. The pauses are as tenacity's exponential backoff with jitter would make
    them from the first attempt: 50 ms, then 100 ms, ... at most 1 s, each plus up to 50 ms."""
    if not repeatable or attempts <= 1:
        return await request()
    try:
        return await request()
    except TRANSPORT_FAILURES:
        await anyio.sleep(PAUSE + random.uniform(0, JITTER))
    retrying = AsyncRetrying(stop=stop_after_attempt(attempts - 1), sleep=anyio.sleep, reraise=True,
                             wait=wait_exponential(multiplier=2 * PAUSE, max=LONGEST) + wait_random(0, JITTER),
                             retry=retry_if_exception_type(TRANSPORT_FAILURES))
    return await retrying(request)
