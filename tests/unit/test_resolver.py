"""The resolver asks the registry as little as it can and always answers by the deadline."""

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Collection, Iterator, Mapping

import pytest

from webhook import errors, metrics
from webhook.core import outcomes, references
from webhook.registries import resolver, retries

REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
APP = outcomes.Repository(REGISTRY, "team/app")
API = outcomes.Repository(REGISTRY, "team/api")
MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
LONG = 30.0
"""A deadline far enough away that only a hanging registry can reach it."""


def tag(name: str, repository: outcomes.Repository = APP) -> outcomes.Query:
    return outcomes.Query(repository, tag=name)


def digest_of(name: str) -> references.Digest:
    return references.Digest("sha256:" + hashlib.sha256(name.encode()).hexdigest())


def found(name: str) -> outcomes.Found:
    return outcomes.Found(digest_of(name), MEDIA_TYPE)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeRegistry:
    """An in-memory registry client that records its calls and can fail or hang."""

    def __init__(self) -> None:
        self.images: dict[outcomes.Query, outcomes.Outcome] = {}
        self.mutabilities: dict[outcomes.Repository, outcomes.MutabilityOutcome] = {}
        self.lookups: list[tuple[outcomes.Repository, frozenset[outcomes.Query]]] = []
        self.describes: list[outcomes.Repository] = []
        self.timeouts: list[float] = []
        self.threads: list[int] = []
        self.failure: Exception | None = None
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    def hang(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def lookup(
        self,
        repository: outcomes.Repository,
        queries: Collection[outcomes.Query],
        *,
        timeout: float,
    ) -> Mapping[outcomes.Query, outcomes.Outcome]:
        with self._lock:
            self.lookups.append((repository, frozenset(queries)))
            self.timeouts.append(timeout)
            self.threads.append(threading.get_ident())
        self.gate.wait(LONG)
        if self.failure is not None:
            raise self.failure
        return {
            q: self.images.get(q, outcomes.Missing("ImageNotFound", f"{q}: not found"))
            for q in queries
        }

    def mutability(
        self, repository: outcomes.Repository, *, timeout: float
    ) -> outcomes.MutabilityOutcome:
        with self._lock:
            self.describes.append(repository)
        self.gate.wait(LONG)
        if self.failure is not None:
            raise self.failure
        return self.mutabilities.get(
            repository, outcomes.TagMutability(outcomes.Mutability.MUTABLE)
        )


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    yield fake
    fake.release()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def the_resolver(
    registry: FakeRegistry, clock: FakeClock
) -> AsyncIterator[resolver.Resolver]:
    the_resolver = resolver.Resolver(
        registry, ttl=60.0, negative_ttl=5.0, mutability_ttl=600.0, clock=clock
    )
    yield the_resolver
    registry.release()
    await the_resolver.aclose()


async def resolve(
    the_resolver: resolver.Resolver,
    clock: FakeClock,
    *queries: outcomes.Query,
    max_stale: float = 600.0,
    within: float = LONG,
) -> dict[outcomes.Query, outcomes.Outcome]:
    return await the_resolver.resolve(dict.fromkeys(queries, max_stale), deadline=clock() + within)


def cache_lookups(result: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "digestguard_cache_lookups_total", {"cache": "digests", "result": result}
    )
    return value or 0.0


# Batching and call counts


async def test_one_admission_makes_one_lookup_per_repository(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    queries = [tag("a"), tag("b"), tag("c"), tag("x", API), tag("y", API)]

    await resolve(the_resolver, clock, *queries)

    assert sorted(registry.lookups, key=lambda call: call[0].name) == [
        (API, frozenset(queries[3:])),
        (APP, frozenset(queries[:3])),
    ]


async def test_every_query_gets_the_registry_answer(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")

    answers = await resolve(the_resolver, clock, tag("v1"), tag("gone"))

    assert answers == {
        tag("v1"): found("v1"),
        tag("gone"): outcomes.Missing("ImageNotFound", f"{tag('gone')}: not found"),
    }


async def test_a_second_admission_of_the_same_images_makes_no_call(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"), tag("x", API))

    answers = await resolve(the_resolver, clock, tag("v1"), tag("x", API))

    assert len(registry.lookups) == 2
    assert answers[tag("v1")] == found("v1")


async def test_only_the_cache_misses_are_asked(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    await resolve(the_resolver, clock, tag("a"))

    await resolve(the_resolver, clock, tag("a"), tag("b"))

    assert registry.lookups[-1] == (APP, frozenset({tag("b")}))


async def test_an_empty_admission_makes_no_call(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    assert await resolve(the_resolver, clock) == {}
    assert registry.lookups == []


# Single-flight


async def test_concurrent_resolves_of_one_new_tag_share_one_lookup(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")

    answers = await asyncio.gather(*(resolve(the_resolver, clock, tag("v1")) for _ in range(500)))

    assert len(registry.lookups) == 1
    assert all(answer == {tag("v1"): found("v1")} for answer in answers)


async def test_waiters_for_any_query_of_an_inflight_call_share_it(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("a")] = found("a")
    registry.images[tag("b")] = found("b")
    registry.hang()
    first = asyncio.create_task(resolve(the_resolver, clock, tag("a"), tag("b")))
    await asyncio.sleep(0)  # let the first admission start its call
    for_a = asyncio.create_task(resolve(the_resolver, clock, tag("a")))
    for_b = asyncio.create_task(resolve(the_resolver, clock, tag("b")))
    await asyncio.sleep(0)

    registry.release()

    assert await for_a == {tag("a"): found("a")}
    assert await for_b == {tag("b"): found("b")}
    assert len(await first) == 2
    assert len(registry.lookups) == 1


async def test_concurrent_mutability_questions_share_one_call(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    answers = await asyncio.gather(
        *(the_resolver.mutability([APP], deadline=clock() + LONG) for _ in range(100))
    )

    assert registry.describes == [APP]
    assert all(isinstance(answer[APP], outcomes.TagMutability) for answer in answers)


# Threads and timeouts


async def test_the_client_runs_off_the_event_loop_thread(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    await resolve(the_resolver, clock, tag("a"))

    assert registry.threads != [threading.get_ident()]


async def test_the_client_gets_the_time_left_to_the_deadline_as_timeout(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    await resolve(the_resolver, clock, tag("a"), within=7.0)

    assert registry.timeouts == [7.0]


# Cache lifetimes


async def test_a_found_digest_is_asked_again_after_its_ttl(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(59.0)
    await resolve(the_resolver, clock, tag("v1"))
    assert len(registry.lookups) == 1

    clock.advance(1.0)
    await resolve(the_resolver, clock, tag("v1"))

    assert len(registry.lookups) == 2


async def test_a_missing_image_is_cached_only_for_the_negative_ttl(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    await resolve(the_resolver, clock, tag("gone"))
    clock.advance(4.0)
    await resolve(the_resolver, clock, tag("gone"))
    assert len(registry.lookups) == 1

    clock.advance(1.0)
    await resolve(the_resolver, clock, tag("gone"))

    assert len(registry.lookups) == 2


async def test_a_newly_pushed_tag_is_found_once_the_negative_ttl_passes(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    await resolve(the_resolver, clock, tag("v2"))
    registry.images[tag("v2")] = found("v2")
    clock.advance(5.0)

    answers = await resolve(the_resolver, clock, tag("v2"))

    assert answers[tag("v2")] == found("v2")


async def test_unknown_is_kept_only_for_the_failure_ttl(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = outcomes.Unknown("KmsError")
    await resolve(the_resolver, clock, tag("v1"))
    registry.images[tag("v1")] = found("v1")
    clock.advance(resolver.FAILURE_TTL)

    answers = await resolve(the_resolver, clock, tag("v1"))

    assert answers[tag("v1")] == found("v1")
    assert len(registry.lookups) == 2


async def test_a_registry_error_is_kept_only_for_the_failure_ttl(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.failure = errors.RegistryError("throttled")
    await resolve(the_resolver, clock, tag("v1"))
    registry.failure = None
    clock.advance(resolver.FAILURE_TTL)

    await resolve(the_resolver, clock, tag("v1"))

    assert len(registry.lookups) == 2


async def test_corrupt_is_never_cached(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = outcomes.Corrupt("digest mismatch")
    await resolve(the_resolver, clock, tag("v1"))

    answers = await resolve(the_resolver, clock, tag("v1"))

    assert answers[tag("v1")] == outcomes.Corrupt("digest mismatch")
    assert len(registry.lookups) == 2


async def test_the_cache_holds_at_most_max_entries(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    small = resolver.Resolver(registry, max_entries=3, clock=clock)
    try:
        await resolve(small, clock, *(tag(str(n)) for n in range(10)))

        entries = metrics.REGISTRY.get_sample_value(
            "digestguard_cache_entries", {"cache": resolver.DIGESTS_CACHE}
        )
        assert entries == 3
    finally:
        await small.aclose()


async def test_the_least_recently_used_entry_is_evicted_first(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    small = resolver.Resolver(registry, max_entries=3, clock=clock)
    try:
        for name in ("a", "b", "c"):
            await resolve(small, clock, tag(name))
        await resolve(small, clock, tag("a"))  # a is now the most recently used
        await resolve(small, clock, tag("d"))  # evicts b
        calls = len(registry.lookups)

        await resolve(small, clock, tag("a"))
        assert len(registry.lookups) == calls
        await resolve(small, clock, tag("b"))
        assert len(registry.lookups) == calls + 1
    finally:
        await small.aclose()


async def test_mutability_is_cached_for_its_own_ttl(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    await the_resolver.mutability([APP], deadline=clock() + LONG)
    clock.advance(599.0)
    await the_resolver.mutability([APP], deadline=clock() + LONG)
    assert registry.describes == [APP]

    clock.advance(1.0)
    await the_resolver.mutability([APP], deadline=clock() + LONG)

    assert registry.describes == [APP, APP]


async def test_unknown_mutability_is_never_cached(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.failure = errors.RegistryError("AccessDenied")
    first = await the_resolver.mutability([APP], deadline=clock() + LONG)
    registry.failure = None

    second = await the_resolver.mutability([APP], deadline=clock() + LONG)

    assert isinstance(first[APP], outcomes.Unknown)
    assert second[APP] == outcomes.TagMutability(outcomes.Mutability.MUTABLE)


# Deadlines


async def test_the_deadline_is_honoured_when_the_registry_hangs(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.hang()

    answers = await resolve(the_resolver, clock, tag("v1"), within=0.05)

    outcome = answers[tag("v1")]
    assert isinstance(outcome, outcomes.Unknown)
    assert "did not answer within the deadline" in outcome.message


async def test_mutability_honours_the_deadline_when_the_registry_hangs(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.hang()

    answers = await the_resolver.mutability([APP], deadline=clock() + 0.05)

    assert isinstance(answers[APP], outcomes.Unknown)


async def test_a_call_abandoned_at_the_deadline_still_answers_the_next_admission(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    registry.hang()
    await resolve(the_resolver, clock, tag("v1"), within=0.05)

    registry.release()
    answers = await resolve(the_resolver, clock, tag("v1"))

    assert answers[tag("v1")] == found("v1")
    assert len(registry.lookups) == 1


async def test_a_deadline_already_past_calls_nothing_and_answers_unknown(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    answers = await resolve(the_resolver, clock, tag("v1"), within=-1.0)

    assert isinstance(answers[tag("v1")], outcomes.Unknown)
    assert registry.lookups == []


# Failures of the client


async def test_a_registry_error_makes_every_query_of_the_call_unknown(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.failure = errors.RegistryError("ECR BatchGetImage throttled")

    answers = await resolve(the_resolver, clock, tag("a"), tag("b"), max_stale=0.0)

    assert all(isinstance(outcome, outcomes.Unknown) for outcome in answers.values())
    assert "ECR BatchGetImage throttled" in str(answers[tag("a")])


async def test_an_unexpected_client_exception_becomes_unknown(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.failure = RuntimeError("bug")

    answers = await resolve(the_resolver, clock, tag("a"))

    assert isinstance(answers[tag("a")], outcomes.Unknown)


async def test_a_query_the_client_left_out_is_unknown(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    class Forgetful(FakeRegistry):
        def lookup(
            self,
            repository: outcomes.Repository,
            queries: Collection[outcomes.Query],
            *,
            timeout: float,
        ) -> Mapping[outcomes.Query, outcomes.Outcome]:
            return {}

    forgetful = resolver.Resolver(Forgetful(), clock=clock)
    try:
        answers = await resolve(forgetful, clock, tag("a"))
    finally:
        await forgetful.aclose()

    assert isinstance(answers[tag("a")], outcomes.Unknown)


async def test_a_closed_resolver_answers_unknown_without_calling_the_registry(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    closed = resolver.Resolver(registry, clock=clock)
    await closed.aclose()

    answers = await resolve(closed, clock, tag("a"))

    assert isinstance(answers[tag("a")], outcomes.Unknown)
    assert registry.lookups == []


# Stale-if-error


async def test_a_stale_digest_is_served_within_max_stale_when_the_registry_errors(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(120.0)
    registry.failure = errors.RegistryError("ThrottlingException")

    answers = await resolve(the_resolver, clock, tag("v1"), max_stale=600.0)

    assert answers[tag("v1")] == outcomes.Found(digest_of("v1"), MEDIA_TYPE, age_seconds=120.0)


async def test_a_stale_digest_older_than_max_stale_is_not_served(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(120.0)
    registry.failure = errors.RegistryError("ThrottlingException")

    answers = await resolve(the_resolver, clock, tag("v1"), max_stale=119.0)

    assert isinstance(answers[tag("v1")], outcomes.Unknown)


async def test_a_stale_digest_is_served_when_the_registry_misses_the_deadline(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(61.0)
    registry.hang()

    answers = await resolve(the_resolver, clock, tag("v1"), within=0.05)

    assert answers[tag("v1")] == outcomes.Found(digest_of("v1"), MEDIA_TYPE, age_seconds=61.0)


async def test_a_missing_answer_is_never_replaced_by_a_stale_digest(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(61.0)
    del registry.images[tag("v1")]

    answers = await resolve(the_resolver, clock, tag("v1"))

    assert isinstance(answers[tag("v1")], outcomes.Missing)


def archived(name: str) -> outcomes.Archived:
    return outcomes.Archived("ARCHIVED", f"{tag(name)} is archived in ECR")


async def test_an_archived_image_is_cached_only_for_the_negative_ttl(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("old")] = archived("old")
    first = await resolve(the_resolver, clock, tag("old"))
    clock.advance(4.0)
    await resolve(the_resolver, clock, tag("old"))
    assert (first[tag("old")], len(registry.lookups)) == (archived("old"), 1)

    clock.advance(1.0)
    await resolve(the_resolver, clock, tag("old"))

    assert len(registry.lookups) == 2


async def test_an_archived_image_is_never_replaced_by_a_stale_digest(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(61.0)
    registry.images[tag("v1")] = archived("v1")

    answers = await resolve(the_resolver, clock, tag("v1"))

    assert answers[tag("v1")] == archived("v1")


async def test_a_registry_error_after_an_archived_answer_serves_no_stale_digest(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(61.0)
    registry.images[tag("v1")] = archived("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(6.0)
    registry.failure = errors.RegistryError("ThrottlingException")

    answers = await resolve(the_resolver, clock, tag("v1"), max_stale=600.0)

    assert isinstance(answers[tag("v1")], outcomes.Unknown)


async def test_a_tag_not_imported_through_the_cache_is_cached_only_for_the_negative_ttl(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("first")] = outcomes.NotImported("not imported yet")
    first = await resolve(the_resolver, clock, tag("first"))
    registry.images[tag("first")] = found("first")
    clock.advance(4.0)
    cached = await resolve(the_resolver, clock, tag("first"))
    clock.advance(1.0)

    imported = await resolve(the_resolver, clock, tag("first"))

    assert first[tag("first")] == cached[tag("first")] == outcomes.NotImported("not imported yet")
    assert imported[tag("first")] == found("first")


async def test_archived_images_do_not_open_the_circuit(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    for n in range(5):
        registry.images[tag(f"old-{n}")] = archived(f"old-{n}")
        await resolve(the_resolver, clock, tag(f"old-{n}"))
    assert the_resolver.circuit(REGISTRY).state.value == "closed"
    assert len(registry.lookups) == 5


async def test_a_stale_answer_is_counted_as_stale(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(61.0)
    registry.failure = errors.RegistryError("ThrottlingException")
    before = cache_lookups("stale")

    await resolve(the_resolver, clock, tag("v1"))

    assert cache_lookups("stale") == before + 1


async def test_cache_hits_are_counted_as_hits(
    the_resolver: resolver.Resolver, clock: FakeClock
) -> None:
    await resolve(the_resolver, clock, tag("a"), tag("b"))
    before = cache_lookups("hit")

    await resolve(the_resolver, clock, tag("a"), tag("b"))

    assert cache_lookups("hit") == before + 2


async def open_the_circuit(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.failure = errors.RegistryError("connection refused")
    for n in range(3):
        await resolve(the_resolver, clock, tag(f"warm-up-{n}"))


async def test_after_consecutive_failures_the_registry_is_not_asked(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    await open_the_circuit(the_resolver, registry, clock)
    asked = len(registry.lookups)

    answers = await resolve(the_resolver, clock, tag("new"), tag("other", API))

    assert len(registry.lookups) == asked
    assert all(isinstance(a, outcomes.Unknown) for a in answers.values())
    assert "is unavailable" in str(answers[tag("new")])


async def test_an_open_circuit_serves_cached_digests_within_max_stale(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(120)  # past the TTL
    await open_the_circuit(the_resolver, registry, clock)
    asked = len(registry.lookups)

    answers = await resolve(the_resolver, clock, tag("v1"), max_stale=600)

    assert len(registry.lookups) == asked
    assert answers[tag("v1")].digest == digest_of("v1")  # type: ignore[union-attr]


async def test_one_probe_a_cool_down_finds_the_registry_back(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    await open_the_circuit(the_resolver, registry, clock)
    registry.failure = None
    registry.images[tag("v1")] = found("v1")
    asked = len(registry.lookups)
    clock.advance(1.0)

    answers = [await resolve(the_resolver, clock, tag("v1")) for _ in range(3)]

    assert len(registry.lookups) == asked + 1, "the probe, then the cache"
    assert all(a[tag("v1")] == found("v1") for a in answers)
    assert the_resolver.circuit(REGISTRY).state.value == "closed"


async def test_missing_images_do_not_open_the_circuit(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    for n in range(5):
        await resolve(the_resolver, clock, tag(f"absent-{n}"))
    assert the_resolver.circuit(REGISTRY).state.value == "closed"
    assert len(registry.lookups) == 5


async def test_each_registry_has_its_own_circuit(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    await open_the_circuit(the_resolver, registry, clock)
    registry.failure = None
    elsewhere = outcomes.Repository("222233334444.dkr.ecr.eu-west-1.amazonaws.com", "team/app")
    registry.images[tag("v1", elsewhere)] = found("v1")

    answers = await resolve(the_resolver, clock, tag("v1", elsewhere))

    assert answers[tag("v1", elsewhere)] == found("v1")


async def test_admissions_of_the_probed_tag_do_not_wait_for_the_probe(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    # A probe of a registry that accepts and never answers must not hold the admissions
    # of its own tag for their whole deadline: they get the open circuit's answer.
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(120)  # past the TTL: v1 is stale from here on
    await open_the_circuit(the_resolver, registry, clock)
    registry.failure = None
    registry.hang()
    clock.advance(1.0)  # the cool-down: the next call is the probe
    asked = len(registry.lookups)
    probe = asyncio.create_task(resolve(the_resolver, clock, tag("v1")))
    while len(registry.lookups) == asked:  # noqa: ASYNC110 - the fake records from a thread
        await asyncio.sleep(0.01)
    assert not probe.done()

    joined = await asyncio.wait_for(resolve(the_resolver, clock, tag("v1")), LONG / 2)

    assert len(registry.lookups) == asked + 1, "the probe only"
    stale = joined[tag("v1")]
    assert isinstance(stale, outcomes.Found)
    assert stale.digest == digest_of("v1")
    assert stale.age_seconds is not None
    assert stale.age_seconds >= 120
    registry.release()
    assert (await probe)[tag("v1")] == found("v1")


async def test_a_probe_makes_a_single_attempt_where_a_call_would_retry(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    attempts: list[str] = []

    class Refusing(FakeRegistry):
        def lookup(
            self,
            repository: outcomes.Repository,
            queries: Collection[outcomes.Query],
            *,
            timeout: float,
        ) -> Mapping[outcomes.Query, outcomes.Outcome]:
            def attempt() -> Mapping[outcomes.Query, outcomes.Outcome]:
                attempts.append(repository.name)
                raise errors.Retryable("503 Service Unavailable")

            return retries.call(
                attempt,
                what="lookup",
                budget_end=time.monotonic() + 0.5,
                logger=logging.getLogger("test"),
                context={},
            )

    the_resolver = resolver.Resolver(Refusing(), failures_to_open=1, cool_down=1.0, clock=clock)
    try:
        await resolve(the_resolver, clock, tag("v1"))
        retried = len(attempts)
        assert retried > 1, "a call retries a 503 within its budget"
        assert the_resolver.circuit(REGISTRY).state.value == "open"
        clock.advance(1.0)

        await resolve(the_resolver, clock, tag("v1"))

        assert len(attempts) == retried + 1, "the probe asks once"
        assert the_resolver.circuit(REGISTRY).state.value == "open"
    finally:
        await the_resolver.aclose()


# Failures shared and remembered; refresh ahead


async def _landed(the_resolver: resolver.Resolver) -> None:
    """Wait until no lookup is in flight (one started in the background has landed)."""
    for _ in range(3000):
        if not the_resolver._digest_flights:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a lookup stayed in flight for 30 s")


async def test_a_failed_lookup_is_not_repeated_for_a_moment(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.failure = errors.RegistryError("connection refused")

    first = await resolve(the_resolver, clock, tag("v1"))
    again = [await resolve(the_resolver, clock, tag("v1")) for _ in range(20)]

    assert len(registry.lookups) == 1, "the failure was shared with the next admissions"
    assert isinstance(first[tag("v1")], outcomes.Unknown)
    assert all(answer == first for answer in again)
    clock.advance(resolver.FAILURE_TTL)
    await resolve(the_resolver, clock, tag("v1"))
    assert len(registry.lookups) == 2, "asked again once the failure is a second old"


async def test_a_remembered_failure_serves_the_stale_digest_at_once(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(61)  # expired
    registry.failure = errors.RegistryError("connection refused")

    answers = [await resolve(the_resolver, clock, tag("v1")) for _ in range(10)]

    assert len(registry.lookups) == 2
    assert all(a[tag("v1")].digest == digest_of("v1") for a in answers)  # type: ignore[union-attr]
    assert all(a[tag("v1")].age_seconds == 61 for a in answers)  # type: ignore[union-attr]


async def test_a_lookup_that_could_not_start_is_not_remembered_as_a_failure(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    # A deadline already past: the registry was never asked, so nothing is known of it.
    await resolve(the_resolver, clock, tag("v1"), within=-1.0)
    await _landed(the_resolver)
    await resolve(the_resolver, clock, tag("v1"))
    assert len(registry.lookups) == 1


async def test_a_success_forgets_the_failure(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.failure = errors.RegistryError("throttled")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(resolver.FAILURE_TTL)
    registry.failure = None
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(61)
    registry.failure = errors.RegistryError("throttled")

    await resolve(the_resolver, clock, tag("v1"))

    assert len(registry.lookups) == 3, "the expired digest was looked up, not refused at once"


async def test_registry_calls_stay_one_per_tag_per_second_whatever_the_admission_rate(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    """1,000 admissions a second of 10 tags, for 10 s, with a registry that fails every
    call: at most one lookup per tag per failure TTL, however many admissions ask."""
    the_resolver = resolver.Resolver(registry, failures_to_open=10**6, clock=clock)
    registry.failure = errors.RegistryError("read timeout")
    tags = [tag(f"t{n}") for n in range(10)]
    try:
        for _ in range(10):
            for n in range(1000):
                await resolve(the_resolver, clock, tags[n % 10])
            clock.advance(1.0)
    finally:
        await the_resolver.aclose()
    assert len(registry.lookups) <= 10 * 10


async def test_a_tag_in_use_is_refreshed_before_it_expires(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(60 * (1 - resolver.REFRESH_AHEAD) + 1)  # near the end of its TTL
    registry.images[tag("v1")] = found("v2")  # the tag moved

    near_the_end = await resolve(the_resolver, clock, tag("v1"))
    await _landed(the_resolver)
    assert near_the_end[tag("v1")] == found("v1"), "answered from the cache, not waited"
    assert len(registry.lookups) == 2, "refreshed in the background"
    clock.advance(60 * resolver.REFRESH_AHEAD)  # past the first lookup's TTL
    after = await resolve(the_resolver, clock, tag("v1"))

    assert len(registry.lookups) == 2, "a hit: the refresh keeps the hot tag fresh"
    assert after[tag("v1")] == found("v2")


async def test_a_tag_not_used_is_not_refreshed(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(30)
    await resolve(the_resolver, clock, tag("v1"))  # half way: no refresh yet
    await _landed(the_resolver)
    assert len(registry.lookups) == 1


async def test_a_failed_refresh_does_not_extend_freshness(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(55)
    registry.failure = errors.RegistryError("connection refused")
    await resolve(the_resolver, clock, tag("v1"))  # starts a refresh, which fails
    await _landed(the_resolver)
    clock.advance(6)  # 61 s after the digest was resolved

    answer = (await resolve(the_resolver, clock, tag("v1")))[tag("v1")]

    assert isinstance(answer, outcomes.Found)
    assert answer.age_seconds == 61, "served as stale, with its age, not as fresh"


async def _asked(registry: FakeRegistry, calls: int) -> None:
    """Wait until the registry has been called `calls` times."""
    for _ in range(3000):
        if len(registry.lookups) >= calls:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{calls} registry calls were not made within 30 s")


async def test_admissions_waiting_on_a_hung_call_are_answered_when_the_circuit_opens(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    """A call started before the outage was seen hangs with it; its admissions stop
    waiting for it as soon as other calls open the circuit, not at their deadline."""
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(61)  # expired: the next admission asks again
    registry.hang()
    waiting = asyncio.create_task(resolve(the_resolver, clock, tag("v1")))
    await _asked(registry, 2)  # the call is out, and hangs
    circuit = the_resolver.circuit(REGISTRY)
    for _ in range(3):  # other calls to this registry fail meanwhile
        circuit.failed("connection refused")
    for _ in range(20):
        await asyncio.sleep(0)

    assert waiting.done(), "still waiting for the hung call"
    answer = waiting.result()[tag("v1")]
    assert isinstance(answer, outcomes.Found), "the stale digest, within max_stale"
    assert answer.age_seconds == 61
    assert registry.gate.is_set() is False, "answered while the registry still hangs"


async def test_a_circuit_that_opens_ends_only_the_waits_on_its_own_registry(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    other = outcomes.Repository("210987654321.dkr.ecr.eu-west-1.amazonaws.com", "team/app")
    registry.hang()
    waiting = asyncio.create_task(
        resolve(the_resolver, clock, tag("v1"), outcomes.Query(other, tag="v1"))
    )
    await _asked(registry, 2)
    for _ in range(3):
        the_resolver.circuit(other.registry).failed("connection refused")
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done(), "still waiting for the registry whose circuit is closed"
    registry.release()
    answers = await waiting
    assert isinstance(answers[tag("v1")], outcomes.Missing)


# The first pod of a revision


async def test_a_query_to_recheck_is_asked_again_unless_its_entry_is_a_moment_old(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(resolver.RECHECK_AGE / 2)
    await the_resolver.resolve({tag("v1"): 600.0}, deadline=clock() + LONG, recheck={tag("v1")})
    assert len(registry.lookups) == 1, "a moment-old answer is what the registry says now"

    registry.images[tag("v1")] = found("v1, moved")
    clock.advance(resolver.RECHECK_AGE)
    answers = await the_resolver.resolve(
        {tag("v1"): 600.0}, deadline=clock() + LONG, recheck={tag("v1")}
    )

    assert len(registry.lookups) == 2
    assert answers[tag("v1")] == found("v1, moved")


async def test_a_recheck_the_registry_cannot_answer_falls_back_to_the_cached_digest(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    await resolve(the_resolver, clock, tag("v1"))
    clock.advance(10.0)
    registry.failure = errors.RegistryError("connection refused")

    answers = await the_resolver.resolve(
        {tag("v1"): 600.0}, deadline=clock() + LONG, recheck={tag("v1")}
    )

    answer = answers[tag("v1")]
    assert isinstance(answer, outcomes.Found)
    assert answer.digest == digest_of("v1")
    assert answer.age_seconds == pytest.approx(10.0)


# Credential scopes: no answer crosses from one pod namespace's Secret to another


def scoped(name: str, scope: str) -> outcomes.Query:
    return outcomes.Query(APP, tag=name, scope=scope)


async def test_an_answer_got_with_a_namespaces_secret_is_not_served_to_another_scope(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    with_secret = scoped("v1", "team-a/regcred@7")
    registry.images[with_secret] = found("v1")
    registry.images[tag("v1")] = outcomes.Unknown("needs credentials")

    assert (await resolve(the_resolver, clock, with_secret))[with_secret] == found("v1")
    anonymous = await resolve(the_resolver, clock, tag("v1"))
    other = scoped("v1", "team-b/regcred@9")
    borrowed = await resolve(the_resolver, clock, other)

    assert anonymous[tag("v1")] == outcomes.Unknown("needs credentials")
    assert borrowed[other] != found("v1")
    assert [call[1] for call in registry.lookups] == [
        frozenset({with_secret}),
        frozenset({tag("v1")}),
        frozenset({other}),
    ]


async def test_a_stale_digest_of_one_scope_is_not_served_to_another_when_the_registry_fails(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    with_secret = scoped("v1", "team-a/regcred@7")
    registry.images[with_secret] = found("v1")
    await resolve(the_resolver, clock, with_secret)
    registry.failure = errors.RegistryError("down")

    answer = await resolve(the_resolver, clock, tag("v1"), max_stale=600.0)

    assert isinstance(answer[tag("v1")], outcomes.Unknown)


async def test_one_call_asks_with_one_scope(
    the_resolver: resolver.Resolver, registry: FakeRegistry, clock: FakeClock
) -> None:
    queries = [scoped("a", "team-a/regcred@7"), scoped("b", "team-a/regcred@7"), tag("c")]

    await resolve(the_resolver, clock, *queries)

    assert {call[1] for call in registry.lookups} == {
        frozenset(queries[:2]),
        frozenset(queries[2:]),
    }


def test_the_scope_is_never_shown_in_a_query() -> None:
    assert str(scoped("v1", "team-a/regcred@7")) == str(tag("v1"))


async def test_a_resolver_not_measured_leaves_the_cache_and_circuit_metrics_alone(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.images[tag("v1")] = found("v1")
    entries = metrics.REGISTRY.get_sample_value(
        "digestguard_cache_entries", {"cache": resolver.DIGESTS_CACHE}
    )
    misses = cache_lookups("miss")
    unmeasured = resolver.Resolver(registry, clock=clock, measured=False)
    try:
        assert await resolve(unmeasured, clock, tag("v1"), tag("v2")) == {
            tag("v1"): found("v1"),
            tag("v2"): outcomes.Missing("ImageNotFound", f"{tag('v2')}: not found"),
        }
    finally:
        await unmeasured.aclose()
    assert cache_lookups("miss") == misses
    assert (
        metrics.REGISTRY.get_sample_value(
            "digestguard_cache_entries", {"cache": resolver.DIGESTS_CACHE}
        )
        == entries
    )
