"""The periodic audit's reports: one Warning Event per gone or archived image, metrics with
bounded labels. Cycles are given; the Lease and the apiserver are fakes."""

import hashlib
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import cluster
from webhook import errors, metrics, names
from webhook.core import audit, outcomes, references
from webhook.serving import audit as auditing

ECR = "111122223333.dkr.ecr.eu-west-1.amazonaws.com"
REPO = outcomes.Repository(ECR, "shop/api")
OLD = references.Digest("sha256:" + hashlib.sha256(b"old").hexdigest())
RS = audit.Owner("ReplicaSet", "web-6dd57c7c59", "apps/v1", "rs-uid")
RUNNING = audit.Running(
    namespace="shop",
    owner=audit.Owner("Deployment", "web", "apps/v1", ""),
    list_name="containers",
    container="app",
    image=f"{ECR}/shop/api:v1",
    repository=REPO,
    digest=OLD,
    tag="v1",
    controller=RS,
)


def report(*states: audit.State) -> auditing.Report:
    return auditing.Report(
        findings=tuple(audit.Finding(RUNNING, state, "ImageNotFound: no", 2) for state in states),
        pods=2,
        skipped=(),
        skipped_count=0,
        registry_calls={"BatchGetImage": 1},
        seconds=0.1,
    )


class Cycles:
    """An auditor whose cycles return the reports queued."""

    def __init__(self) -> None:
        self.reports: list[auditing.Report] = []

    def run(self, namespace: str | None = None) -> auditing.Report:
        return self.reports.pop(0)


class Poster:
    def __init__(self) -> None:
        self.posted: list[dict[str, Any]] = []
        self.works = True

    def __call__(self, **event: Any) -> bool:
        if self.works:
            self.posted.append(event)
        return self.works


@pytest.fixture
def cycles() -> Cycles:
    return Cycles()


@pytest.fixture
def poster() -> Poster:
    return Poster()


def periodic(
    cycles: Cycles, poster: Poster, uid: str | None = "deploy-uid"
) -> auditing.PeriodicAudit:
    return auditing.PeriodicAudit(
        cycles,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        interval=1.0,
        post_warning=poster,
        deployment_uid=lambda namespace, name: uid,
        reporter="replica-0",
    )


def run(audit_: auditing.PeriodicAudit, cycles: Cycles, *reports: auditing.Report) -> None:
    cycles.reports.extend(reports)
    for _ in reports:
        assert audit_.cycle() is not None


def test_a_gone_image_is_posted_once_on_its_deployment(cycles: Cycles, poster: Poster) -> None:
    audit_ = periodic(cycles, poster)
    run(audit_, cycles, report(audit.State.GONE), report(audit.State.GONE))
    (event,) = poster.posted
    assert event["kind"] == "Deployment"
    assert event["name"] == "web"
    assert event["uid"] == "deploy-uid"
    assert event["reason"] == names.REASON_RUNNING_IMAGE_GONE
    assert OLD in event["message"]


def test_an_archived_image_has_its_own_reason(cycles: Cycles, poster: Poster) -> None:
    run(periodic(cycles, poster), cycles, report(audit.State.ARCHIVED))
    assert [e["reason"] for e in poster.posted] == [names.REASON_RUNNING_IMAGE_ARCHIVED]


def test_a_deployment_that_cannot_be_read_gets_the_event_on_its_replicaset(
    cycles: Cycles, poster: Poster
) -> None:
    run(periodic(cycles, poster, uid=None), cycles, report(audit.State.GONE))
    (event,) = poster.posted
    assert (event["kind"], event["name"], event["uid"]) == ("ReplicaSet", RS.name, "rs-uid")


def test_an_event_that_could_not_be_posted_is_tried_again_next_cycle(
    cycles: Cycles, poster: Poster
) -> None:
    audit_ = periodic(cycles, poster)
    poster.works = False
    run(audit_, cycles, report(audit.State.GONE))
    poster.works = True
    run(audit_, cycles, report(audit.State.GONE), report(audit.State.GONE))
    assert len(poster.posted) == 1


def test_an_image_restored_then_gone_again_is_posted_again(cycles: Cycles, poster: Poster) -> None:
    audit_ = periodic(cycles, poster)
    run(
        audit_,
        cycles,
        report(audit.State.GONE),
        report(audit.State.CURRENT),
        report(audit.State.GONE),
    )
    assert len(poster.posted) == 2


def test_a_registry_blip_does_not_post_a_standing_finding_again(
    cycles: Cycles, poster: Poster
) -> None:
    audit_ = periodic(cycles, poster)
    run(
        audit_,
        cycles,
        report(audit.State.GONE),
        report(audit.State.UNKNOWN),
        report(audit.State.GONE),
    )
    assert len(poster.posted) == 1


def test_tag_moved_and_unknown_images_post_nothing(cycles: Cycles, poster: Poster) -> None:
    run(periodic(cycles, poster), cycles, report(audit.State.TAG_MOVED, audit.State.UNKNOWN))
    assert poster.posted == []


def samples(name: str) -> list[Any]:
    exposition, _ = metrics.exposition()
    return [
        sample
        for family in text_string_to_metric_families(exposition.decode())
        for sample in family.samples
        if sample.name == name
    ]


def test_images_are_counted_by_namespace_owner_kind_and_state_only(
    cycles: Cycles, poster: Poster
) -> None:
    run(periodic(cycles, poster), cycles, report(audit.State.TAG_MOVED))
    (sample,) = samples("digestguard_audit_images")
    assert sample.labels == {"namespace": "shop", "owner_kind": "Deployment", "state": "tag-moved"}
    assert sample.value == 1
    (calls,) = samples("digestguard_audit_registry_calls")
    assert calls.labels == {"operation": "BatchGetImage"}
    assert calls.value == 1


def test_a_cycle_that_cannot_list_pods_fails_without_stopping_the_audit(poster: Poster) -> None:
    class Failing:
        def run(self, namespace: str | None = None) -> auditing.Report:
            raise errors.KubernetesError("cannot list pods in all namespaces: HTTP 403", 403)

    failing = auditing.PeriodicAudit(
        Failing(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        interval=1.0,
        post_warning=poster,
        deployment_uid=lambda namespace, name: None,
        reporter="r",
    )
    assert failing.cycle() is None


class FakeLease:
    namespace = "digestguard"
    name = "audit"
    identity = "replica-0"

    def __init__(self) -> None:
        self.held = True

    def try_hold(self) -> bool:
        return self.held

    def release(self) -> None:
        self.held = False


def test_a_replica_that_loses_the_lease_stops_reporting_its_last_cycle(
    cycles: Cycles, poster: Poster
) -> None:
    lease = FakeLease()
    cycles.reports.extend(report(audit.State.GONE) for _ in range(1000))
    audit_ = auditing.PeriodicAudit(
        cycles,  # type: ignore[arg-type]
        lease,  # type: ignore[arg-type]
        interval=0.01,
        post_warning=poster,
        deployment_uid=lambda namespace, name: "uid",
        reporter="replica-0",
        retry_period=0.01,
    )
    audit_.start()
    try:
        cluster.eventually("a cycle reported", lambda: samples("digestguard_audit_images"), 10)
        lease.held = False
        cluster.eventually(
            "the gauges dropped", lambda: not samples("digestguard_audit_images"), 10
        )
    finally:
        audit_.stop()
    assert len(poster.posted) == 1, "one Event however many cycles"
