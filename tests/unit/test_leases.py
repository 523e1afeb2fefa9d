"""One replica at a time: the audit Lease, against a store that checks resourceVersions as
the apiserver does."""

import copy
import datetime
from typing import Any

from webhook import errors
from webhook.serving import leases


class Store:
    """Leases by name, with optimistic concurrency (a stale resourceVersion is a 409)."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.fail: errors.KubernetesError | None = None

    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.fail is not None:
            raise self.fail
        found = self.leases.get(name)
        return copy.deepcopy(found) if found is not None else None

    def write(self, namespace: str, body: Any, create: bool) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        name = body["metadata"]["name"]
        current = self.leases.get(name)
        if create and current is not None:
            raise errors.Conflict("exists", 409)
        if not create and (
            current is None
            or body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]
        ):
            raise errors.Conflict("stale", 409)
        self.version += 1
        written = copy.deepcopy(dict(body))
        written["metadata"]["resourceVersion"] = str(self.version)
        self.leases[name] = written
        return copy.deepcopy(written)

    def holder(self) -> str:
        return str(self.leases["audit"]["spec"]["holderIdentity"])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lease(store: Store, clock: Clock, identity: str) -> leases.Lease:
    return leases.Lease(
        namespace="digestguard",
        name="audit",
        identity=identity,
        read=lambda namespace, name: store.read(namespace, name),
        write=lambda namespace, body, create: store.write(namespace, body, create),
        clock=clock,
        wall_clock=lambda: datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC),
    )


def test_the_first_replica_creates_the_lease_and_holds_it() -> None:
    store, clock = Store(), Clock()
    first = lease(store, clock, "a")
    assert first.try_hold()
    assert store.holder() == "a"
    assert store.leases["audit"]["spec"]["leaseDurationSeconds"] == leases.LEASE_SECONDS
    assert store.leases["audit"]["spec"]["renewTime"] == "2026-12-03T12:00:00.000000Z"


def test_a_second_replica_does_not_take_a_lease_that_is_renewed() -> None:
    store, clock = Store(), Clock()
    first, second = lease(store, clock, "a"), lease(store, clock, "b")
    assert first.try_hold()
    for _ in range(20):
        assert not second.try_hold()
        clock.now += leases.RETRY_SECONDS
        assert first.try_hold()
    assert store.holder() == "a"
    assert not second.held


def test_a_lease_not_renewed_for_its_duration_is_taken_over() -> None:
    store, clock = Store(), Clock()
    first, second = lease(store, clock, "a"), lease(store, clock, "b")
    assert first.try_hold()
    assert not second.try_hold()
    clock.now += leases.LEASE_SECONDS + 1
    assert not first.held, "a holder that could not renew stops acting as one first"
    assert second.try_hold()
    assert store.holder() == "b"
    assert store.leases["audit"]["spec"]["leaseTransitions"] == 1
    assert not first.try_hold()


def test_the_duration_is_measured_from_when_the_change_was_seen_not_from_renew_time() -> None:
    store, clock = Store(), Clock()
    first = lease(store, clock, "a")
    assert first.try_hold()
    # A replica that starts late first sees the Lease now: it waits the whole duration.
    clock.now += leases.LEASE_SECONDS * 10
    late = lease(store, clock, "b")
    assert not late.try_hold()
    clock.now += leases.LEASE_SECONDS + 1
    assert late.try_hold()


def test_of_two_replicas_writing_at_once_the_one_with_a_stale_version_stays_a_follower() -> None:
    store, clock = Store(), Clock()
    first, second = lease(store, clock, "a"), lease(store, clock, "b")
    assert first.try_hold()
    assert not second.try_hold()
    clock.now += leases.LEASE_SECONDS + 1
    original_read = store.read

    def read_then_another_takes_it(namespace: str, name: str) -> dict[str, Any] | None:
        seen = original_read(namespace, name)
        assert seen is not None
        taken = copy.deepcopy(seen)
        taken["spec"]["holderIdentity"] = "c"
        store.write(namespace, taken, False)
        return seen

    store.read = read_then_another_takes_it  # type: ignore[method-assign]
    assert not second.try_hold(), "its write carried a stale resourceVersion"
    assert store.holder() == "c"


def test_a_released_lease_is_taken_at_once() -> None:
    store, clock = Store(), Clock()
    first, second = lease(store, clock, "a"), lease(store, clock, "b")
    assert first.try_hold()
    assert not second.try_hold()
    first.release()
    assert not first.held
    assert store.holder() == ""
    assert second.try_hold()


def test_an_apiserver_failure_is_not_holding_once_the_renew_deadline_passes() -> None:
    store, clock = Store(), Clock()
    first = lease(store, clock, "a")
    assert first.try_hold()
    store.fail = errors.KubernetesError("cannot update Lease: HTTP 403 Forbidden", 403)
    clock.now += 1
    assert first.try_hold(), "still within the renew deadline"
    clock.now += leases.LEASE_SECONDS
    assert not first.try_hold()
