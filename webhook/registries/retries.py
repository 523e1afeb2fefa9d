"""The one retry policy of the registry clients: full-jitter backoff inside a time budget."""

import logging
import random
import time
from collections.abc import Mapping
from typing import Any, Final

from webhook import errors

BACKOFF_BASE_SECONDS: Final = 0.05
BACKOFF_CAP_SECONDS: Final = 1.0
MIN_ATTEMPT_SECONDS: Final = 0.05
"""No new attempt starts with less than this left of the budget: it could not finish."""


def backoff(attempt: int) -> float:
    """Full jitter: a uniform pause up to an exponentially growing, capped ceiling."""
    return random.uniform(0.0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1)))


def pause_or_give_up(
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
