"""One revision, one digest, in the pure core: which revision a pod is of, what its
pods run, and how a pod of a revision is decided."""

import hashlib
import json
from typing import Any

import pytest

from webhook import names
from webhook.core import decisions, outcomes, policies, references, revisions

ECR = "111122223333.dkr.ecr.eu-west-1.amazonaws.com"
IMAGE = f"{ECR}/shop/api:v1"
REPO = outcomes.Repository(ECR, "shop/api")
OLD = references.Digest("sha256:" + hashlib.sha256(b"api v1").hexdigest())
NEW = references.Digest("sha256:" + hashlib.sha256(b"api v1, rebuilt").hexdigest())
BY_TAG = outcomes.Query(REPO, tag="v1")
OLD_BY_DIGEST = outcomes.Query(REPO, digest=OLD)
MEDIA = "application/vnd.oci.image.index.v1+json"
RS_UID = "0f6c2b55-9d3e-4c77-a1f4-2f2d9a1c0b11"


def owner(
    kind: str = "ReplicaSet", name: str = "web-6dd57c7c59", uid: str = RS_UID
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod(
    image: str = IMAGE,
    *,
    owners: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    name: str = "",
    created: str = "",
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "generateName": "web-6dd57c7c59-",
        "namespace": "shop",
        "labels": {"app": "web", "pod-template-hash": "6dd57c7c59"} if labels is None else labels,
        "ownerReferences": [owner()] if owners is None else owners,
    }
    if annotations is not None:
        metadata["annotations"] = annotations
    if name:
        metadata["name"] = name
    if created:
        metadata["creationTimestamp"] = created
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "api", "image": image}]},
    }


def pinned_pod(digest: str, *, created: str, name: str, original: str = IMAGE) -> dict[str, Any]:
    return pod(
        f"{original}@{digest}",
        annotations={names.ANNOTATION_ORIGINAL_IMAGES: json.dumps({"containers/api": original})},
        name=name,
        created=created,
    )


REPLICASET = revisions.of(pod(), "shop")


def test_a_replicaset_pod_is_of_the_revision_of_its_owner_and_pod_template_hash() -> None:
    assert (
        revisions.Revision(
            "shop",
            "ReplicaSet",
            "web-6dd57c7c59",
            RS_UID,
            "6dd57c7c59",
            "pod-template-hash=6dd57c7c59",
        )
        == REPLICASET
    )
    assert str(REPLICASET) == "ReplicaSet shop/web-6dd57c7c59"


def test_statefulset_and_daemonset_pods_are_of_their_controller_revision_hash() -> None:
    for kind in ("StatefulSet", "DaemonSet"):
        found = revisions.of(
            pod(owners=[owner(kind, "db")], labels={"controller-revision-hash": "db-7c9f"}), "shop"
        )
        assert found is not None
        assert (found.kind, found.hash, found.selector) == (
            kind,
            "db-7c9f",
            "controller-revision-hash=db-7c9f",
        )
        assert str(found) == f"{kind} shop/db revision db-7c9f"


def test_a_job_pod_is_found_by_its_controller_uid_label() -> None:
    found = revisions.of(
        pod(
            owners=[owner("Job", "migrate", "job-uid")],
            labels={"batch.kubernetes.io/controller-uid": "job-uid", "job-name": "migrate"},
        ),
        "shop",
    )
    assert found is not None
    assert found.selector == "batch.kubernetes.io/controller-uid=job-uid"


def test_a_replicationcontroller_pod_is_found_by_all_its_labels() -> None:
    found = revisions.of(
        pod(owners=[owner("ReplicationController", "legacy")], labels={"b": "2", "a": "1"}), "shop"
    )
    assert found is not None
    assert found.selector == "a=1,b=2"


@pytest.mark.parametrize(
    ("owners", "labels"),
    [
        ([], None),  # a bare pod
        ([{**owner(), "controller": False}], None),  # owned, but not by its controller
        ([owner("CronJob", "nightly")], None),  # not a kind that creates pods itself
        ([owner()], {"app": "web"}),  # a ReplicaSet pod without its pod-template-hash
        ([{**owner(), "uid": ""}], None),
        ("not a list", None),
    ],
)
def test_a_pod_without_a_known_controller_revision_is_of_none(owners: Any, labels: Any) -> None:
    assert revisions.of(pod(owners=owners, labels=labels), "shop") is None


def test_the_digest_a_revision_runs_is_that_of_its_oldest_pinned_pod() -> None:
    assert REPLICASET is not None
    listed = [
        pinned_pod(NEW, created="2026-12-02T10:05:00Z", name="web-b"),
        pinned_pod(OLD, created="2026-12-02T10:00:00Z", name="web-a"),
        pod(name="web-c"),  # not pinned by the webhook: says nothing
        {
            **pinned_pod(NEW, created="2026-12-01T00:00:00Z", name="other"),
            "metadata": {
                **pinned_pod(NEW, created="2026-12-01T00:00:00Z", name="other")["metadata"],
                "ownerReferences": [owner(uid="another-replicaset")],
            },
        },
    ]
    assert revisions.digests_in_use(REPLICASET, listed) == {IMAGE: OLD}


def test_a_malformed_annotation_or_image_on_a_listed_pod_is_ignored() -> None:
    assert REPLICASET is not None
    broken = pod(
        f"{IMAGE}@sha256:nothex",
        annotations={names.ANNOTATION_ORIGINAL_IMAGES: json.dumps({"containers/api": IMAGE})},
    )
    garbled = pod(f"{IMAGE}@{OLD}", annotations={names.ANNOTATION_ORIGINAL_IMAGES: "{not json"})
    assert revisions.digests_in_use(REPLICASET, [broken, garbled, {"metadata": "x"}]) == {}


def mutate(**spec: Any) -> policies.Policy:
    return policies.parse("pin", 1, {"images": ["*.dkr.ecr.*.amazonaws.com/**"], **spec})


def plan_for(obj: dict[str, Any], *policy_list: policies.Policy) -> decisions.Plan:
    review = decisions.Review(operation="CREATE", namespace="shop", obj=obj)
    return decisions.plan(review, policy_list or (mutate(),), {}, decisions.Phase.MUTATING)


def test_a_pod_of_a_revision_that_runs_a_digest_is_checked_and_pinned_by_that_digest() -> None:
    the_plan = decisions.follow_revision(plan_for(pod()), {IMAGE: OLD})
    assert OLD_BY_DIGEST in the_plan.queries
    verdict = decisions.decide(
        the_plan,
        {BY_TAG: outcomes.Found(NEW, MEDIA), OLD_BY_DIGEST: outcomes.Found(OLD, MEDIA)},
        {},
    )
    assert verdict.allowed
    assert [edit.value for edit in verdict.edits] == [f"{IMAGE}@{OLD}"]
    assert verdict.revision_digests == {IMAGE: OLD}
    assert verdict.repins == ()
    (note,) = verdict.warnings
    assert f"tag now points to {NEW}; pinned to {OLD}" in note
    assert names.REASON_REVISION_KEPT in note


def test_the_first_pod_of_a_revision_asks_the_registry_afresh_and_its_digest_is_remembered() -> (
    None
):
    the_plan = decisions.follow_revision(plan_for(pod()), {})
    assert the_plan.recheck == {BY_TAG}
    verdict = decisions.decide(the_plan, {BY_TAG: outcomes.Found(NEW, MEDIA)}, {})
    assert [edit.value for edit in verdict.edits] == [f"{IMAGE}@{NEW}"]
    assert verdict.revision_digests == {IMAGE: NEW}


def test_a_revision_digest_gone_from_the_registry_is_replaced_by_the_tags_with_a_warning() -> None:
    the_plan = decisions.follow_revision(plan_for(pod()), {IMAGE: OLD})
    verdict = decisions.decide(
        the_plan,
        {
            BY_TAG: outcomes.Found(NEW, MEDIA),
            OLD_BY_DIGEST: outcomes.Missing("ImageNotFound", "Requested image not found"),
        },
        {},
    )
    assert verdict.allowed
    assert [edit.value for edit in verdict.edits] == [f"{IMAGE}@{NEW}"]
    (repin,) = verdict.repins
    assert (repin.image, repin.gone, repin.digest) == (IMAGE, OLD, NEW)
    assert "ImageNotFound" in repin.why
    assert any(
        names.REASON_REVISION_DIGEST_GONE in w and f"the digest {OLD}" in w
        for w in verdict.warnings
    )


def test_an_archived_revision_digest_is_replaced_by_the_tags_too() -> None:
    the_plan = decisions.follow_revision(plan_for(pod()), {IMAGE: OLD})
    archived = outcomes.Archived("ARCHIVED", "archived: restore it with update-image-storage-class")
    verdict = decisions.decide(
        the_plan, {BY_TAG: outcomes.Found(NEW, MEDIA), OLD_BY_DIGEST: archived}, {}
    )
    assert [edit.value for edit in verdict.edits] == [f"{IMAGE}@{NEW}"]
    (repin,) = verdict.repins
    assert "update-image-storage-class" in repin.why


def test_a_revision_digest_gone_and_its_tag_gone_too_is_denied_as_missing() -> None:
    the_plan = decisions.follow_revision(plan_for(pod()), {IMAGE: OLD})
    missing = outcomes.Missing("ImageNotFound", "Requested image not found")
    verdict = decisions.decide(the_plan, {BY_TAG: missing, OLD_BY_DIGEST: missing}, {})
    assert not verdict.allowed
    assert names.REASON_IMAGE_MISSING in verdict.message
    assert [r.digest for r in verdict.repins] == [None]


def test_when_the_registry_cannot_tell_a_revision_keeps_its_digest_if_the_tag_resolves() -> None:
    the_plan = decisions.follow_revision(plan_for(pod()), {IMAGE: OLD})
    verdict = decisions.decide(
        the_plan,
        {
            BY_TAG: outcomes.Found(NEW, MEDIA, age_seconds=30),
            OLD_BY_DIGEST: outcomes.Unknown("down"),
        },
        {},
    )
    assert [edit.value for edit in verdict.edits] == [f"{IMAGE}@{OLD}"]


def test_when_the_registry_cannot_tell_at_all_a_revision_pod_falls_to_on_resolve_error() -> None:
    the_plan = decisions.follow_revision(plan_for(pod()), {IMAGE: OLD})
    down = outcomes.Unknown("down")
    denied = decisions.decide(the_plan, {BY_TAG: down, OLD_BY_DIGEST: down}, {})
    assert not denied.allowed
    assert names.REASON_REGISTRY_UNAVAILABLE in denied.message
    allowing = plan_for(pod(), mutate(onResolveError="Allow"))
    admitted = decisions.decide(
        decisions.follow_revision(allowing, {IMAGE: OLD}), {BY_TAG: down, OLD_BY_DIGEST: down}, {}
    )
    assert admitted.allowed
    assert admitted.edits == ()


def test_pin_scope_pod_pins_each_pod_to_its_tag_whatever_the_revision_runs() -> None:
    the_plan = plan_for(pod(), mutate(pinScope="Pod"))
    assert the_plan.revision is not None
    assert the_plan.rollout_images == frozenset()
    followed = decisions.follow_revision(the_plan, {IMAGE: OLD})
    assert OLD_BY_DIGEST not in followed.queries
    assert followed.recheck == frozenset()


def test_a_bare_pod_an_update_or_a_pinned_image_is_not_pinned_per_revision() -> None:
    assert plan_for(pod(owners=[])).revision is None
    update = decisions.Review(operation="UPDATE", namespace="shop", obj=pod(), old=pod())
    assert decisions.plan(update, (mutate(),), {}, decisions.Phase.MUTATING).revision is None
    assert plan_for(pod(f"{IMAGE}@{OLD}")).rollout_images == frozenset()


def test_an_unknown_pin_scope_is_refused_naming_the_field() -> None:
    with pytest.raises(Exception, match="pinScope"):
        mutate(pinScope="Deployment")
