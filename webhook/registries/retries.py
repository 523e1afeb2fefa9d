"""The one retry loop of the registry clients: full-jitter backoff inside a time budget.

Both clients (ECR and OCI distribution) wrap one attempt of a call in a function that
raises `Retryable` for a failure worth another try (throttling, a server error, a
connection error or a timeout) and anything else for a failure that is not; `call`
runs it until it succeeds, fails for good, or the budget has no room for another try.
"""

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, TypeVar

from webhook import errors

_T = TypeVar("_T")

BACKOFF_BASE_SECONDS: Final = 0.05
BACKOFF_CAP_SECONDS: Final = 1.0
REFUSED_ATTEMPTS: Final = 2
"""Attempts at a registry that refuses connections: it answers at once, and no backoff
within one admission's budget brings a stopped endpoint back."""
MIN_ATTEMPT_SECONDS: Final = 0.05
"""No new attempt starts with less than this left of the budget: it could not finish."""


def backoff(attempt: int) -> float:
    """Full jitter: a uniform pause up to an exponentially growing, capped ceiling."""
    return random.uniform(0.0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1)))


_thread = threading.local()


@contextlib.contextmanager
def one_attempt() -> Iterator[None]:
    """Within it, `call` makes a single attempt on this thread: a circuit breaker's probe
    asks once, so a registry that is down gets one request per probe, not a retry loop."""
    _thread.one_attempt = True
    try:
        yield
    finally:
        _thread.one_attempt = False


def call(
    attempt: Callable[[], _T],
    *,
    what: str,
    budget_end: float,
    logger: logging.Logger,
    context: Mapping[str, Any],
) -> _T:
    """`attempt()`, again after each `Retryable` while the budget allows another try.

    Raises `errors.DeadlineExceeded` when no time is left for a first try, and
    `errors.RegistryError` when the budget is spent; any other exception of `attempt`
    goes through as it is.
    """
    if budget_end - time.monotonic() <= 0:
        raise errors.DeadlineExceeded(f"{what} had no time left to try")
    attempts = 0
    while True:
        attempts += 1
        try:
            return attempt()
        except errors.Retryable as exc:
            if getattr(_thread, "one_attempt", False):
                raise errors.RegistryError(f"{what} failed: {exc.problem}") from exc
            if exc.refused and attempts >= REFUSED_ATTEMPTS:
                logger.warning(
                    f"{what} gave up: the connection was refused again",
                    extra={**context, "attempts": attempts, "problem": exc.problem},
                )
                raise errors.RegistryError(
                    f"{what} failed: the connection was refused {attempts} times; last:"
                    f" {exc.problem}"
                ) from exc
            _pause_or_give_up(
                what=what,
                attempt=attempts,
                problem=exc.problem,
                budget_end=budget_end,
                logger=logger,
                context=context,
                retry_after=exc.retry_after or 0.0,
            )


def _pause_or_give_up(
    *,
    what: str,
    attempt: int,
    problem: str,
    budget_end: float,
    logger: logging.Logger,
    context: Mapping[str, Any],
    retry_after: float = 0.0,
) -> None:
    """Sleep before attempt `attempt + 1`, or raise `RegistryError` if the budget has no room."""
    delay = max(backoff(attempt), retry_after)
    if budget_end - time.monotonic() - delay < MIN_ATTEMPT_SECONDS:
        logger.warning(
            f"{what} gave up: no time left for another attempt",
            extra={**context, "attempts": attempt, "problem": problem},
        )
        raise errors.RegistryError(
            f"{what} failed {attempt} time(s) within its time budget; last: {problem}"
        )
    logger.info(
        f"{what} will be retried",
        extra={**context, "attempt": attempt, "problem": problem, "delay": delay},
    )
    time.sleep(delay)
