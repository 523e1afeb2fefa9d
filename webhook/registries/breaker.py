"""A circuit breaker per registry endpoint, so an outage is answered at once.

Without it, every admission during a registry outage waits out its whole deadline
(retries included) before it is answered with a stale digest or `onResolveError`:
seconds per pod creation, for every pod in the cluster. With it:

    closed     calls go through; `failures_to_open` consecutive failed calls open it
    open       no call goes out: the resolver answers "could not tell" at once, so a
               digest cached within maxStale is served and a new tag gets
               onResolveError without waiting; after `cool_down` it lets one probe
    half-open  one call (the probe) is in flight; the others are answered as if open.
               The probe's success closes the circuit, its failure opens it again

A failed call is one that gave no per-image answer: unreachable, refused, timed out,
throttled as a whole. An answer that an image is missing is a success: the registry
works. The endpoint is the registry host: for ECR that is one account in one region
(`<account>.dkr.ecr.<region>.amazonaws.com`), for any other registry its host.
"""

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from typing import Final

from webhook import metrics

logger = logging.getLogger("digestguard.breaker")

FAILURES_TO_OPEN: Final = 3
COOL_DOWN_SECONDS: Final = 1.0
"""While open, at most one call a second goes to the registry; it is found back within
about a second of its return."""


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Breaker:
    """The circuit of one endpoint. Not thread-safe: used from the event loop only."""

    def __init__(
        self,
        endpoint: str,
        *,
        failures_to_open: int = FAILURES_TO_OPEN,
        cool_down: float = COOL_DOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        measured: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self._measured = measured
        self._failures_to_open = failures_to_open
        self._cool_down = cool_down
        self._clock = clock
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._last_problem = ""
        self._on_open: list[asyncio.Future[None]] = []
        if measured:
            _report(endpoint, self._state)

    @property
    def state(self) -> State:
        return self._state

    def allow(self) -> bool:
        """Whether a call may go out now; True in half-open means: this call is the probe."""
        if self._state is State.CLOSED:
            return True
        if self._state is State.OPEN and self._clock() - self._opened_at >= self._cool_down:
            self._move(State.HALF_OPEN, "probing whether the registry is back")
            return True
        return False

    def opening(self) -> "asyncio.Future[None]":
        """Done when the circuit next opens: who waits on a call to this endpoint stops."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._on_open = [f for f in self._on_open if not f.done()]
        self._on_open.append(future)
        return future

    def refusal(self) -> str:
        """Why a call was not let through, for the admission's message."""
        return (
            f"{self.endpoint} is unavailable: {self._failures} calls in a row failed"
            f" (last: {self._last_problem}); not asked again until it answers a probe"
        )

    def succeeded(self) -> None:
        self._failures = 0
        if self._state is not State.CLOSED:
            self._move(State.CLOSED, "the registry answered")

    def failed(self, problem: str) -> None:
        self._failures += 1
        self._last_problem = problem[:200]
        if self._state is State.HALF_OPEN or (
            self._state is State.CLOSED and self._failures >= self._failures_to_open
        ):
            self._opened_at = self._clock()
            self._move(State.OPEN, self._last_problem)

    def _move(self, state: State, why: str) -> None:
        previous, self._state = self._state, state
        if state is State.OPEN:
            waiting, self._on_open = self._on_open, []
            for future in waiting:
                if not future.done():
                    future.set_result(None)
        if self._measured:
            _report(self.endpoint, state)
            metrics.REGISTRY_CIRCUIT_TRANSITIONS.labels(self.endpoint, state.value).inc()
        log = logger.warning if state is State.OPEN else logger.info
        log(
            f"registry circuit {state.value}",
            extra={
                "endpoint": self.endpoint,
                "from": previous.value,
                "to": state.value,
                "failures": self._failures,
                "why": why,
            },
        )


def _report(endpoint: str, state: State) -> None:
    for each in State:
        metrics.REGISTRY_CIRCUIT.labels(endpoint, each.value).set(int(each is state))
