"""The resolver: cache, single-flight, batching and deadlines in front of a registry client.

It keeps the webhook a light user of the registry and keeps every admission within
its time budget:

- **Cache.** A `Found` is fresh for `ttl`; a `Missing`, an `Archived` or a
  `NotImported` for `negative_ttl` (an archived image may be restored, a
  pull-through image imported, any minute); `Unknown` and `Corrupt` are never
  cached, so the next admission asks again. A `Found` is
  kept past its TTL (until evicted) to serve stale-if-error. Each cache holds at
  most `max_entries`, evicting the least recently used. `max_entries=0` turns
  caching, batching and single-flight all off: one registry request per image,
  nothing shared (what a webhook that does not cache does; a benchmark baseline).
- **Batching.** The cache misses of one call are grouped by repository: one
  `client.lookup` per repository, never one per image.
- **Single-flight, whatever the outcome.** A query already being asked about is not
  asked again: concurrent callers wait for the same registry call, and share its
  answer, error or timeout alike. A query whose last call failed is not asked again
  for `failure_ttl` either: it is answered "could not tell" at once (so stale-if-error
  applies at once), or a burst of admissions past an expired entry would each start a
  lookup against a registry that just failed.
- **Refresh ahead.** A fresh `Found` that is used in the last `refresh_ahead` part of
  its TTL is looked up again in the background, so a tag in use never makes an
  admission wait for the registry; a tag nobody uses is not refreshed. The TTL still
  bounds the age of a digest that is served fresh.
- **Deadlines.** Blocking client calls run in a bounded thread pool, with the time
  left as their timeout. `resolve` answers by its deadline whatever the client does;
  a call still running then is abandoned, not cancelled, and its answer still
  fills the cache for the next admission.
- **Stale-if-error.** When the registry could not tell (error, timeout, deadline),
  the last `Found` is served if it is no older than the caller's `max_stale`, with
  its age in `Found.age_seconds`.
- **Circuit breaking.** Each registry endpoint has a `breaker.Breaker`: after a few
  calls in a row failed, no call goes out and "could not tell" is answered at once
  (so stale-if-error and onResolveError apply without waiting), with one probe a
  second to find the registry back.
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Collection, Coroutine, Hashable, Iterable, Mapping
from typing import Any, Final, Generic, TypeVar

from webhook import errors, metrics
from webhook.core import outcomes, references
from webhook.registries import breaker, protocol, retries

logger = logging.getLogger("digestguard.resolver")

DIGESTS_CACHE: Final = "digests"
MUTABILITY_CACHE: Final = "mutability"
FAILURES_CACHE: Final = "failures"

_STUCK_AFTER_SECONDS: Final = 30.0
"""A registry call this long past its deadline is not joined any more: a new one starts.

Until then late callers join it rather than add load to a registry that is slow."""

FAILURE_TTL: Final = 1.0
"""Seconds for which a query whose lookup failed is answered "could not tell" at once."""
REFRESH_AHEAD: Final = 0.2
"""The last part of a Found's TTL in which a use of it starts a lookup in the background."""
RECHECK_AGE: Final = 2.0
"""A query to `recheck` is answered from the cache only if the entry is younger than this."""

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class _Entry(Generic[_V]):
    value: _V
    stored_at: float


class _LruCache(Generic[_K, _V]):
    """A size-bounded mapping that forgets the least recently used entry first.

    Entries are kept as plain `(value, stored_at)` tuples (see `_DigestCache`).
    """

    def __init__(self, name: str, max_entries: int, *, measured: bool = True) -> None:
        self._name = name
        self._measured = measured
        self._max_entries = max_entries
        self._entries: collections.OrderedDict[_K, tuple[_V, float]] = collections.OrderedDict()

    def get(self, key: _K) -> _Entry[_V] | None:
        stored = self._entries.get(key)
        return None if stored is None else _Entry(*stored)

    def touch(self, key: _K) -> None:
        if key in self._entries:
            self._entries.move_to_end(key)

    def discard(self, key: _K) -> None:
        if self._entries.pop(key, None) is not None:
            self._report()

    def put(self, key: _K, value: _V, stored_at: float) -> None:
        self._entries[key] = (value, stored_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        self._report()

    def _report(self) -> None:
        if self._measured:
            metrics.CACHE_ENTRIES.labels(self._name).set(len(self._entries))


_Key = tuple[str, str, str | None, str | None, str]
"""A query as plain strings: registry, repository, tag, digest, credential scope."""
_Stored = tuple[int, str, str]
"""An answer as plain atoms: (_FOUND, digest, media type), (_MISSING, code, message) or
(_ARCHIVED, status, message) or (_NOT_IMPORTED, "", message)."""
_FOUND: Final = 0
_MISSING: Final = 1
_ARCHIVED: Final = 2
_NOT_IMPORTED: Final = 3

Answer = outcomes.Found | outcomes.Missing | outcomes.Archived | outcomes.NotImported
"""An outcome the cache keeps: the registry's answer about the image."""


class _DigestCache:
    """The tag/digest cache, holding nothing but strings, booleans and floats.

    Python's cyclic garbage collector stops tracking tuples of such atoms, so the
    entries add almost nothing to a full collection. Kept as dataclasses (three
    GC-tracked objects an entry), 100,000 entries made a full collection take
    46 ms instead of 4 ms, and a loaded webhook paused up to 490 ms in them.
    """

    def __init__(self, max_entries: int, *, measured: bool = True) -> None:
        self._lru: _LruCache[_Key, _Stored] = _LruCache(
            DIGESTS_CACHE, max_entries, measured=measured
        )

    def get(self, query: outcomes.Query) -> _Entry[Answer] | None:
        entry = self._lru.get(_key(query))
        if entry is None:
            return None
        kind, first, second = entry.value
        value: Answer
        if kind == _FOUND:
            value = outcomes.Found(references.Digest(first), second)
        elif kind == _ARCHIVED:
            value = outcomes.Archived(first, second)
        elif kind == _NOT_IMPORTED:
            value = outcomes.NotImported(second)
        else:
            value = outcomes.Missing(first, second)
        return _Entry(value, entry.stored_at)

    def touch(self, query: outcomes.Query) -> None:
        self._lru.touch(_key(query))

    def put(self, query: outcomes.Query, value: Answer, stored_at: float) -> None:
        stored: _Stored
        if isinstance(value, outcomes.Found):
            stored = (_FOUND, value.digest, value.media_type)
        elif isinstance(value, outcomes.Archived):
            stored = (_ARCHIVED, value.status, value.message)
        elif isinstance(value, outcomes.NotImported):
            stored = (_NOT_IMPORTED, "", value.message)
        else:
            stored = (_MISSING, value.code, value.message)
        self._lru.put(_key(query), stored, stored_at)


def _key(query: outcomes.Query) -> _Key:
    return (query.repository.registry, query.repository.name, query.tag, query.digest, query.scope)


@dataclasses.dataclass(eq=False)
class _Flight(Generic[_K, _V]):
    """One registry call in progress, answering every key it was started for."""

    task: "asyncio.Task[dict[_K, _V]]"
    deadline: float


class Resolver:
    """Answers image queries and repository mutability, asking the registry as little as it can.

    `deadline` arguments are absolute times on `clock`. Each of the two caches
    (digests, mutability) holds at most `max_entries`. `workers` bounds the threads
    that run blocking client calls. A resolver not `measured` (the audit's, one per
    cycle) leaves the cache and circuit metrics to the admission resolver's.
    """

    def __init__(
        self,
        client: protocol.RegistryClient,
        *,
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
        mutability_ttl: float = 600.0,
        max_entries: int = 100_000,
        workers: int = 16,
        failures_to_open: int = breaker.FAILURES_TO_OPEN,
        cool_down: float = breaker.COOL_DOWN_SECONDS,
        failure_ttl: float = FAILURE_TTL,
        refresh_ahead: float = REFRESH_AHEAD,
        clock: Callable[[], float] = time.monotonic,
        measured: bool = True,
    ) -> None:
        self._client = client
        self._measured = measured
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._refresh_at = ttl * (1.0 - refresh_ahead)
        self._negative_ttl = negative_ttl
        self._mutability_ttl = mutability_ttl
        self._clock = clock
        self._shared = max_entries > 0
        self._digests = _DigestCache(max_entries, measured=measured)
        self._failures: _LruCache[_Key, str] = _LruCache(
            FAILURES_CACHE, max_entries, measured=measured
        )
        self._mutabilities: _LruCache[outcomes.Repository, outcomes.TagMutability] = _LruCache(
            MUTABILITY_CACHE, max_entries, measured=measured
        )
        self._digest_flights: dict[outcomes.Query, _Flight[Any, outcomes.Outcome]] = {}
        self._mutability_flights: dict[
            outcomes.Repository, _Flight[Any, outcomes.MutabilityOutcome]
        ] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="digestguard-registry"
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._breakers: dict[str, breaker.Breaker] = {}
        self._failures_to_open = failures_to_open
        self._cool_down = cool_down

    async def resolve(
        self,
        queries: Mapping[outcomes.Query, float],
        *,
        deadline: float,
        recheck: Collection[outcomes.Query] = (),
    ) -> dict[outcomes.Query, outcomes.Outcome]:
        """The outcome of every query; each value of `queries` is that query's max_stale seconds.

        A query in `recheck` (the first pod of a revision) is asked of the registry unless
        its cache entry is a moment old (`RECHECK_AGE`): what is pinned then is what the
        registry says now, the same for every replica. A failed lookup still falls back
        to the cached digest within max_stale.
        """
        now = self._clock()
        answers: dict[outcomes.Query, outcomes.Outcome] = {}
        waiting: dict[outcomes.Query, _Flight[Any, outcomes.Outcome]] = {}
        # Batches are per repository and credential scope: one call asks with one
        # credential, and an answer about the repository holds only for that credential.
        to_ask: dict[tuple[outcomes.Repository, str], list[outcomes.Query]] = {}
        unshared: list[tuple[tuple[outcomes.Repository, str], list[outcomes.Query]]] = []
        # Answered "could not tell" without waiting: a recent failure, an open circuit.
        at_once: dict[outcomes.Query, outcomes.Outcome] = {}
        to_refresh: dict[tuple[outcomes.Repository, str], list[outcomes.Query]] = {}
        for query in queries:
            entry = self._digests.get(query)
            if (
                entry is not None
                and self._is_fresh(entry, now)
                and not (query in recheck and now - entry.stored_at >= RECHECK_AGE)
            ):
                self._digests.touch(query)
                answers[query] = entry.value
                if self._due_for_refresh(query, entry, now):
                    to_refresh.setdefault((query.repository, query.scope), []).append(query)
                continue
            flight = _joinable(self._digest_flights, query, now) if self._shared else None
            failure = self._recent_failure(query, now) if flight is None else None
            if failure is not None:
                # Asked a moment ago, and the registry could not tell: not asked again yet.
                at_once[query] = outcomes.Unknown(failure)
            elif flight is not None and self._probing(query.repository):
                # The flight is the circuit's probe of a registry that was failing: not
                # waited for, or every admission of its tag waits out a registry that
                # may still hang. Answered as the open circuit answers the others.
                at_once[query] = self._unanswered(query)
            elif flight is not None:
                waiting[query] = flight
            elif self._shared:
                to_ask.setdefault((query.repository, query.scope), []).append(query)
            else:
                unshared.append(((query.repository, query.scope), [query]))
        hits = len(answers)

        for (repository, _), batch in to_refresh.items():
            # Not waited for: the answers above are fresh; this one keeps them so.
            self._start(
                self._digest_flights,
                batch,
                deadline,
                functools.partial(self._lookup, repository, batch, deadline),
            )
        for (repository, _), batch in [*to_ask.items(), *unshared]:
            flight = self._start(
                self._digest_flights,
                batch,
                deadline,
                functools.partial(self._lookup, repository, batch, deadline),
            )
            waiting.update(dict.fromkeys(batch, flight))

        fresh = await self._wait(waiting, deadline, lambda query: query.repository.registry)
        fresh.update(at_once)
        now = self._clock()
        stale = 0
        for query in [*waiting, *at_once]:
            outcome = fresh.get(query) or self._unanswered(query)
            answer = self._stale_if_error(query, outcome, queries[query], now)
            stale += answer is not outcome
            answers[query] = answer
        if self._measured:
            _count(
                DIGESTS_CACHE, hits=hits, stale=stale, misses=len(waiting) + len(at_once) - stale
            )
        return answers

    async def mutability(
        self, repositories: Collection[outcomes.Repository], *, deadline: float
    ) -> dict[outcomes.Repository, outcomes.MutabilityOutcome]:
        """The tag mutability of every repository.

        Never served stale: an old IMMUTABLE could accept a tag that has since become mutable.
        """
        now = self._clock()
        answers: dict[outcomes.Repository, outcomes.MutabilityOutcome] = {}
        waiting: dict[outcomes.Repository, _Flight[Any, outcomes.MutabilityOutcome]] = {}
        for repository in set(repositories):
            entry = self._mutabilities.get(repository)
            if entry is not None and now - entry.stored_at < self._mutability_ttl:
                self._mutabilities.touch(repository)
                answers[repository] = entry.value
                continue
            flight = _joinable(self._mutability_flights, repository, now) if self._shared else None
            if flight is None:
                flight = self._start(
                    self._mutability_flights,
                    [repository],
                    deadline,
                    functools.partial(self._describe, repository, deadline),
                )
            waiting[repository] = flight
        hits = len(answers)

        fresh = await self._wait(waiting, deadline, lambda repository: repository.registry)
        for repository in waiting:
            answers[repository] = fresh.get(repository) or outcomes.Unknown(
                f"{repository}: the registry did not answer within the deadline"
            )
        if self._measured:
            _count(MUTABILITY_CACHE, hits=hits, stale=0, misses=len(waiting))
        return answers

    async def aclose(self) -> None:
        """Stop: cancel the calls in progress and shut the thread pool down without waiting.

        A thread blocked in the client is abandoned; the client's own timeouts end it.
        """
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._digest_flights.clear()
        self._mutability_flights.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _unanswered(self, query: outcomes.Query) -> outcomes.Unknown:
        """ "Could not tell" for a query without an answer: its registry's circuit is not
        closed (the answer the open circuit gives), or the call ran out of time."""
        if self._probing(query.repository):
            refusal = self.circuit(query.repository.registry).refusal()
            return outcomes.Unknown(f"{query.repository}: {refusal}")
        return outcomes.Unknown(f"{query}: the registry did not answer within the deadline")

    def _due_for_refresh(self, query: outcomes.Query, entry: _Entry[Answer], now: float) -> bool:
        return (
            self._shared
            and isinstance(entry.value, outcomes.Found)
            and now - entry.stored_at >= self._refresh_at
            and query not in self._digest_flights
            and not self._probing(query.repository)
            and self._recent_failure(query, now) is None
        )

    def _recent_failure(self, query: outcomes.Query, now: float) -> str | None:
        """What the registry said, if a lookup of `query` failed within `failure_ttl`."""
        if not self._shared:
            return None
        failure = self._failures.get(_key(query))
        if failure is None or now - failure.stored_at >= self._failure_ttl:
            return None
        return failure.value

    def _is_fresh(self, entry: _Entry[Answer], now: float) -> bool:
        ttl = self._ttl if isinstance(entry.value, outcomes.Found) else self._negative_ttl
        return now - entry.stored_at < ttl

    def _stale_if_error(
        self,
        query: outcomes.Query,
        outcome: outcomes.Outcome,
        max_stale: float,
        now: float,
    ) -> outcomes.Outcome:
        if not isinstance(outcome, outcomes.Unknown):
            return outcome
        entry = self._digests.get(query)
        if entry is None or not isinstance(entry.value, outcomes.Found):
            return outcome
        age = now - entry.stored_at
        if age > max_stale:
            return outcome
        self._digests.touch(query)
        logger.info(
            "serving a stale digest: the registry could not tell",
            extra={"image": str(query), "age_seconds": age, "problem": outcome.message},
        )
        return dataclasses.replace(entry.value, age_seconds=age)

    def _remember(self, query: outcomes.Query, outcome: outcomes.Outcome, now: float) -> None:
        if isinstance(outcome, Answer):
            # An Archived replaces a Found kept for stale-if-error: a digest no node can
            # pull must not be served as if it could be.
            self._digests.put(query, outcome, now)
            self._failures.discard(_key(query))
        elif isinstance(outcome, outcomes.Unknown):
            # Not an answer to keep, but not to ask again about at once either. A Found
            # already kept stays for stale-if-error.
            self._failures.put(_key(query), outcome.message, now)

    def _probing(self, repository: outcomes.Repository) -> bool:
        circuit = self._breakers.get(repository.registry)
        return circuit is not None and circuit.state is not breaker.State.CLOSED

    def circuit(self, registry: str) -> breaker.Breaker:
        """The circuit breaker of `registry`'s endpoint."""
        circuit = self._breakers.get(registry)
        if circuit is None:
            circuit = breaker.Breaker(
                registry,
                failures_to_open=self._failures_to_open,
                cool_down=self._cool_down,
                clock=self._clock,
                measured=self._measured,
            )
            self._breakers[registry] = circuit
        return circuit

    async def _guarded(
        self, repository: outcomes.Repository, deadline: float, call: Callable[[float], _T]
    ) -> _T:
        """`call` in the pool, through the circuit of the repository's registry.

        Raises `errors.RegistryError` when the circuit is open or the call failed as
        a whole; an unexpected exception of the client is logged and raised as one.
        """
        circuit = self.circuit(repository.registry)
        if not circuit.allow():
            # Not a failure to remember per tag: the circuit already answers at once, and
            # remembering would delay fresh answers once it closes.
            raise errors.NotAttempted(circuit.refusal())
        probe = circuit.state is breaker.State.HALF_OPEN
        try:
            result = await self._in_thread(deadline, call, one_attempt=probe)
        except errors.NotAttempted:
            if circuit.state is breaker.State.HALF_OPEN:
                circuit.failed("the probe could not start in time")
            raise
        except errors.RegistryError as exc:
            circuit.failed(str(exc))
            raise
        except asyncio.CancelledError:
            circuit.failed("the call was cancelled")
            raise
        except Exception as exc:
            logger.exception("registry client failed", extra={"repository": str(repository)})
            circuit.failed(repr(exc))
            raise errors.RegistryError(f"the registry client failed: {exc!r}") from exc
        circuit.succeeded()
        return result

    async def _lookup(
        self,
        repository: outcomes.Repository,
        batch: list[outcomes.Query],
        deadline: float,
    ) -> dict[outcomes.Query, outcomes.Outcome]:
        try:
            answers = await self._guarded(
                repository,
                deadline,
                lambda timeout: self._client.lookup(repository, batch, timeout=timeout),
            )
        except errors.RegistryError as exc:
            failed = outcomes.Unknown(f"{repository}: {exc}")
            # No call made (deadline passed, circuit open): nothing learnt about this tag.
            if not isinstance(exc, errors.NotAttempted):
                now = self._clock()
                for query in batch:
                    self._remember(query, failed, now)
            return dict.fromkeys(batch, failed)
        results: dict[outcomes.Query, outcomes.Outcome] = {}
        now = self._clock()
        for query in batch:
            outcome = answers.get(query) or outcomes.Unknown(
                f"{query}: the registry client gave no answer"
            )
            self._remember(query, outcome, now)
            results[query] = outcome
        return results

    async def _describe(
        self, repository: outcomes.Repository, deadline: float
    ) -> dict[outcomes.Repository, outcomes.MutabilityOutcome]:
        outcome: outcomes.MutabilityOutcome
        try:
            outcome = await self._guarded(
                repository,
                deadline,
                lambda timeout: self._client.mutability(repository, timeout=timeout),
            )
        except errors.RegistryError as exc:
            outcome = outcomes.Unknown(f"{repository}: {exc}")
        if isinstance(outcome, outcomes.TagMutability):
            self._mutabilities.put(repository, outcome, self._clock())
        return {repository: outcome}

    async def _in_thread(
        self, deadline: float, call: Callable[[float], _T], *, one_attempt: bool = False
    ) -> _T:
        """`call(time left)` in the pool; the time is measured when a thread picks it up.
        With `one_attempt` (a circuit's probe) the client does not retry."""
        if self._closed:
            raise errors.NotAttempted("the resolver is shut down")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._with_time_left, deadline, call, one_attempt
        )

    def _with_time_left(
        self, deadline: float, call: Callable[[float], _T], one_attempt: bool
    ) -> _T:
        time_left = deadline - self._clock()
        if time_left <= 0:
            raise errors.NotAttempted("the deadline passed before a registry call could start")
        if not one_attempt:
            return call(time_left)
        with retries.one_attempt():
            return call(time_left)

    def _start(
        self,
        flights: dict[_K, _Flight[Any, _V]],
        keys: Iterable[_K],
        deadline: float,
        body: Callable[[], Coroutine[Any, Any, dict[_K, _V]]],
    ) -> _Flight[_K, _V]:
        """Run `body` as a task that outlives its callers, registered for every key."""
        keys = list(keys)
        task = asyncio.create_task(_landing(flights, keys, body))
        flight = _Flight(task, deadline)
        for key in keys:
            flights[key] = flight
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return flight

    async def _wait(
        self,
        waiting: Mapping[_K, _Flight[Any, _V]],
        deadline: float,
        registry_of: Callable[[_K], str],
    ) -> dict[_K, _V]:
        """What the flights answered by the deadline; keys still in flight are left out.

        The flights of a registry whose circuit opens meanwhile are not waited for any
        more: a call started before the outage was seen (and hanging with it) would
        otherwise hold its admissions until the deadline."""
        pending: dict[str, set[asyncio.Task[Any]]] = {}
        for key, flight in waiting.items():
            pending.setdefault(registry_of(key), set()).add(flight.task)
        opening: dict[asyncio.Future[None], str] = {}
        for registry in pending:
            circuit = self._breakers.get(registry)
            if circuit is not None and circuit.state is breaker.State.CLOSED:
                opening[circuit.opening()] = registry
        try:
            while any(pending.values()):
                left = deadline - self._clock()
                if left <= 0:
                    break
                tasks = set().union(*pending.values())
                done, _ = await asyncio.wait(
                    tasks | set(opening), timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break
                for registry in pending:
                    pending[registry] -= done
                for future in done & set(opening):
                    pending.pop(opening.pop(future), None)
        finally:
            for future in opening:
                future.cancel()
        answered: dict[_K, _V] = {}
        for key, flight in waiting.items():
            task = flight.task
            if task.done() and not task.cancelled() and task.exception() is None:
                value = task.result().get(key)
                if value is not None:
                    answered[key] = value
        return answered


async def _landing(
    flights: dict[_K, _Flight[Any, _V]],
    keys: list[_K],
    body: Callable[[], Coroutine[Any, Any, dict[_K, _V]]],
) -> dict[_K, _V]:
    """Await `body()`, then unregister its flight in the same step, so no caller joins a
    finished flight instead of reading the cache it just filled."""
    try:
        return await body()
    finally:
        me = asyncio.current_task()
        for key in keys:
            flight = flights.get(key)
            if flight is not None and flight.task is me:
                del flights[key]


def _joinable(
    flights: Mapping[_K, _Flight[Any, _V]], key: _K, now: float
) -> _Flight[Any, _V] | None:
    flight = flights.get(key)
    if flight is None or now > flight.deadline + _STUCK_AFTER_SECONDS:
        return None
    return flight


def _count(cache: str, *, hits: int, stale: int, misses: int) -> None:
    for result, count in (("hit", hits), ("stale", stale), ("miss", misses)):
        if count:
            metrics.CACHE_LOOKUPS.labels(cache, result).inc(count)
