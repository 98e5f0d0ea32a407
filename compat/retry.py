"""The one retry policy: which failures deserve another try, and how long to wait.

Used by the model backend (per call) and by collection (per episode), so
both layers agree on what is transient and both honour a server's
`Retry-After`. Counts are bounded by the caller's `retries`; a single wait
is bounded by `RetryPolicy.max_wait_s`, so a hostile `Retry-After: 86400`
cannot stall a run.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass

SLEEP_SCALE = 1.0
"""Multiplies every wait; tests set it to 0 so retry logic runs at full speed."""

_TRANSIENT_NAMES = frozenset(
    {"APIConnectionError", "APITimeoutError", "RateLimitError", "InternalServerError"}
)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: connection trouble, timeouts, 429 and 5xx replies."""
    if isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return True
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status == 429 or status >= 500)


def in_chain(exc: BaseException | None, test: type[BaseException] | tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception in `exc`'s cause/context chain that is a `test`, or None."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, test):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def retry_after_s(exc: BaseException | None) -> float | None:
    """The wait a server asked for (`retry-after-ms` or `Retry-After`, seconds or a date).

    Read from the first exception in `exc`'s cause chain that carries a response:
    the SDK's 429 under a model error, under the agent's own exception. So a
    whole episode's retry waits what the server asked, as a single call's does.
    """
    seen = 0
    while exc is not None and seen < 10 and getattr(exc, "response", None) is None:
        exc = exc.__cause__ or exc.__context__
        seen += 1
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
    except (TypeError, ValueError, AttributeError):
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, or the server's `Retry-After` when it sent one."""

    base_s: float = 0.25
    cap_s: float = 8.0
    max_wait_s: float = 60.0

    def wait_s(self, attempt: int, exc: BaseException | None = None) -> float:
        """Seconds to wait before retry number `attempt + 1` (attempt counts from 0)."""
        asked = retry_after_s(exc)
        if asked is not None:
            return min(asked, self.max_wait_s) * SLEEP_SCALE
        backoff = min(self.cap_s, self.base_s * 2**attempt)
        return backoff * (0.5 + random.random() / 2) * SLEEP_SCALE

    def sleep(self, attempt: int, exc: BaseException | None = None) -> None:
        time.sleep(self.wait_s(attempt, exc))

    async def asleep(self, attempt: int, exc: BaseException | None = None) -> None:
        await asyncio.sleep(self.wait_s(attempt, exc))


CALL_RETRY = RetryPolicy()
"""Between attempts of one model call."""

EPISODE_RETRY = RetryPolicy(base_s=0.5, cap_s=16.0)
"""Between attempts of a whole episode after a transport failure."""
