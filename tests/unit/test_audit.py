"""The running-image audit in the pure core: what pods run, what is asked, what it means."""

import hashlib
import json
from typing import Any

import pytest

from webhook import names
from webhook.core import audit, outcomes, references

ECR = "111122223333.dkr.ecr.eu-west-1.amazonaws.com"
REPO = outcomes.Repository(ECR, "shop/api")
OLD = references.Digest("sha256:" + hashlib.sha256(b"api v1").hexdigest())
NEW = references.Digest("sha256:" + hashlib.sha256(b"api v1, rebuilt").hexdigest())
MEDIA = "application/vnd.oci.image.index.v1+json"


def rs_owner(name: str = "web-6dd57c7c59") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": name,
        "uid": "rs-uid",
        "controller": True,
    }


def pod(
    image: str = f"{ECR}/shop/api:v1@{OLD}",
    *,
    name: str = "web-6dd57c7c59-abcde",
    namespace: str = "shop",
    original: str | None = f"{ECR}/shop/api:v1",
    owners: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    """A pod as a list of pods holds it: no `kind`."""
    annotations = {}
    if original is not None:
        annotations[names.ANNOTATION_ORIGINAL_IMAGES] = json.dumps({"containers/app": original})
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"{name}-uid",
            "labels": {"pod-template-hash": "6dd57c7c59"} if labels is None else labels,
            "annotations": annotations,
            "ownerReferences": [rs_owner()] if owners is None else owners,
        },
        "spec": {"containers": [{"name": "app", "image": image}]},
        "status": {"phase": phase, "containerStatuses": statuses or []},
    }


def inventory(*pods: dict[str, Any]) -> audit.Inventory:
    taken = audit.Inventory()
    taken.add(pods)
    return taken


def only(taken: audit.Inventory) -> audit.Running:
    (running,) = taken.running
    return running


class TestWhatPodsRun:
    def test_a_pinned_pod_runs_its_digest_and_follows_the_original_tag(self) -> None:
        running = only(inventory(pod()))
        assert running.digest == OLD
        assert running.image == f"{ECR}/shop/api:v1"
        assert running.tag == "v1"
        assert running.repository == REPO
        assert running.container == "app"

    def test_replicas_of_one_owner_are_one_running_image_counted_per_pod(self) -> None:
        taken = inventory(pod(name="web-6dd57c7c59-a"), pod(name="web-6dd57c7c59-b"))
        assert list(taken.running.values()) == [2]
        assert taken.pods == 2

    def test_a_pod_pinned_by_its_author_follows_the_tag_it_was_written_with(self) -> None:
        running = only(inventory(pod(original=None)))
        assert running.image == f"{ECR}/shop/api:v1@{OLD}"
        assert running.tag == "v1"

    def test_an_image_written_by_digest_only_follows_no_tag(self) -> None:
        running = only(inventory(pod(f"{ECR}/shop/api@{OLD}", original=None)))
        assert running.tag is None

    def test_an_original_without_a_tag_follows_latest(self) -> None:
        running = only(inventory(pod(f"{ECR}/shop/api@{OLD}", original=f"{ECR}/shop/api")))
        assert running.tag == "latest"

    def test_an_unpinned_image_runs_the_digest_its_container_status_reports(self) -> None:
        statuses = [
            {"name": "app", "imageID": f"docker-pullable://{ECR}/shop/api@{OLD}", "image": "x"}
        ]
        running = only(inventory(pod(f"{ECR}/shop/api:v1", original=None, statuses=statuses)))
        assert running.digest == OLD
        assert running.tag == "v1"
        assert running.image == f"{ECR}/shop/api:v1"

    def test_a_containerd_image_id_needs_no_prefix(self) -> None:
        statuses = [{"name": "app", "imageID": f"{ECR}/shop/api@{OLD}"}]
        assert only(inventory(pod(f"{ECR}/shop/api:v1", original=None, statuses=statuses)))

    def test_an_image_not_pulled_yet_is_left_out_quietly(self) -> None:
        taken = inventory(pod(f"{ECR}/shop/api:v1", original=None, statuses=[]))
        assert taken.running == {}
        assert taken.skipped == []

    @pytest.mark.parametrize(
        ("image_id", "why"),
        [
            (f"docker://{OLD}", "not a repository digest"),
            (f"docker-pullable://{ECR}/other/repo@{OLD}", "of another repository"),
            ("docker-pullable://Not A Reference@sha256:1", "image ID"),
        ],
    )
    def test_an_image_id_that_names_no_digest_of_the_image_is_skipped_with_a_reason(
        self, image_id: str, why: str
    ) -> None:
        statuses = [{"name": "app", "imageID": image_id}]
        taken = inventory(pod(f"{ECR}/shop/api:v1", original=None, statuses=statuses))
        assert taken.running == {}
        (skipped,) = taken.skipped
        assert why in skipped.reason
        assert skipped.pod == "web-6dd57c7c59-abcde"
        assert skipped.container == "containers[app]"

    def test_an_invalid_image_is_skipped_with_a_reason(self) -> None:
        taken = inventory(pod("Not Valid"))
        assert taken.running == {}
        assert taken.skipped_count == 1

    def test_an_annotation_of_another_repository_is_not_believed(self) -> None:
        running = only(inventory(pod(original=f"{ECR}/elsewhere:v9")))
        assert running.image == f"{ECR}/shop/api:v1@{OLD}"
        assert running.tag == "v1"

    @pytest.mark.parametrize(
        "malformed",
        [
            {},
            {"metadata": "no"},
            {"metadata": {"name": "p"}},
            {"metadata": {"name": "p", "namespace": "n"}, "spec": "no"},
            {"metadata": {"name": "p", "namespace": "n"}, "spec": {"containers": "no"}},
            {"metadata": {"name": "p", "namespace": "n"}, "spec": {"containers": [7, {}]}},
            {
                "metadata": {"name": "p", "namespace": "n", "ownerReferences": [1, {"x": 1}]},
                "spec": {"containers": [{"name": "a", "image": 7}]},
                "status": ["no"],
            },
        ],
    )
    def test_a_malformed_pod_never_crashes_the_audit(self, malformed: dict[str, Any]) -> None:
        assert inventory(malformed).running == {}

    @pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
    def test_finished_pods_are_not_running_anything(self, phase: str) -> None:
        assert inventory(pod(phase=phase)).running == {}

    def test_a_pod_being_deleted_is_not_counted(self) -> None:
        deleting = pod()
        deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        assert inventory(deleting).pods == 0

    def test_init_and_ephemeral_containers_are_audited_too(self) -> None:
        many = pod()
        many["spec"]["initContainers"] = [{"name": "init", "image": f"{ECR}/shop/init@{OLD}"}]
        lists = {r.list_name for r in inventory(many).running}
        assert lists == {"containers", "initContainers"}
        init = next(r for r in inventory(many).running if r.list_name == "initContainers")
        assert init.container_label == "initContainers[init]"


class TestOwners:
    def test_a_replicaset_named_after_its_pods_template_hash_is_lifted_to_its_deployment(
        self,
    ) -> None:
        running = only(inventory(pod()))
        assert running.owner == audit.Owner("Deployment", "web", "apps/v1", "")
        assert running.controller == audit.Owner(
            "ReplicaSet", "web-6dd57c7c59", "apps/v1", "rs-uid"
        )

    def test_a_replicaset_not_named_after_the_hash_stays_the_owner(self) -> None:
        running = only(inventory(pod(owners=[rs_owner("hand-made")])))
        assert running.owner.kind == "ReplicaSet"
        assert running.owner.name == "hand-made"

    def test_a_replicaset_whose_name_is_only_the_hash_stays_the_owner(self) -> None:
        running = only(inventory(pod(owners=[rs_owner("-6dd57c7c59")])))
        assert running.owner.kind == "ReplicaSet"

    def test_a_replicaset_pod_without_its_hash_label_stays_with_the_replicaset(self) -> None:
        running = only(inventory(pod(labels={})))
        assert running.owner.kind == "ReplicaSet"

    @pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet", "Job"])
    def test_other_controllers_are_the_owner(self, kind: str) -> None:
        owner = {
            "apiVersion": "apps/v1",
            "kind": kind,
            "name": "db",
            "uid": "u",
            "controller": True,
        }
        running = only(inventory(pod(owners=[owner])))
        assert running.owner == audit.Owner(kind, "db", "apps/v1", "u")
        assert running.controller is None

    def test_a_pod_without_a_controller_is_its_own_owner(self) -> None:
        not_controller = {**rs_owner(), "controller": False}
        running = only(inventory(pod(name="bare", owners=[not_controller])))
        assert running.owner == audit.Owner("Pod", "bare", "v1", "bare-uid")


def tagged(digest: references.Digest = OLD) -> audit.Running:
    return audit.Running(
        namespace="shop",
        owner=audit.Owner("Deployment", "web", "apps/v1", ""),
        list_name="containers",
        container="app",
        image=f"{ECR}/shop/api:v1",
        repository=REPO,
        digest=digest,
        tag="v1",
    )


BY_DIGEST = outcomes.Query(REPO, digest=OLD)
BY_TAG = outcomes.Query(REPO, tag="v1")


class TestQueries:
    def test_each_digest_and_each_tag_is_asked_once_however_many_pods(self) -> None:
        taken = inventory(*(pod(name=f"web-6dd57c7c59-{i}") for i in range(50)))
        assert audit.queries(taken.running) == {BY_DIGEST, BY_TAG}

    def test_two_digests_of_one_tag_share_the_tag_query(self) -> None:
        assert audit.queries([tagged(OLD), tagged(NEW)]) == {
            BY_DIGEST,
            outcomes.Query(REPO, digest=NEW),
            BY_TAG,
        }

    def test_an_image_by_digest_only_asks_its_digest_only(self) -> None:
        by_digest = audit.Running(**{**tagged().__dict__, "tag": None})
        assert audit.queries([by_digest]) == {BY_DIGEST}


def state(
    answers: dict[outcomes.Query, outcomes.Outcome], running: audit.Running | None = None
) -> audit.Finding:
    return audit.classify(running or tagged(), 1, answers)


class TestStates:
    def test_a_digest_the_tag_still_names_is_current(self) -> None:
        found = outcomes.Found(OLD, MEDIA)
        assert state({BY_DIGEST: found, BY_TAG: found}).state is audit.State.CURRENT

    def test_a_tag_that_resolves_elsewhere_has_moved(self) -> None:
        finding = state({BY_DIGEST: outcomes.Found(OLD, MEDIA), BY_TAG: outcomes.Found(NEW, MEDIA)})
        assert finding.state is audit.State.TAG_MOVED
        assert finding.tag_digest == NEW
        assert NEW in finding.detail

    def test_a_tag_that_no_longer_exists_has_moved(self) -> None:
        finding = state(
            {
                BY_DIGEST: outcomes.Found(OLD, MEDIA),
                BY_TAG: outcomes.Missing("ImageNotFound", "no"),
            }
        )
        assert finding.state is audit.State.TAG_MOVED

    def test_a_missing_digest_is_gone_whatever_the_tag_says(self) -> None:
        finding = state(
            {
                BY_DIGEST: outcomes.Missing("ImageNotFound", "Requested image not found"),
                BY_TAG: outcomes.Found(NEW, MEDIA),
            }
        )
        assert finding.state is audit.State.GONE
        assert "ImageNotFound" in finding.detail

    def test_a_digest_no_longer_held_by_a_pull_through_cache_is_gone(self) -> None:
        finding = state({BY_DIGEST: outcomes.NotImported("upstream has it")})
        assert finding.state is audit.State.GONE

    def test_an_archived_digest_is_archived(self) -> None:
        finding = state({BY_DIGEST: outcomes.Archived("ARCHIVED", "restore it with …")})
        assert finding.state is audit.State.ARCHIVED

    @pytest.mark.parametrize(
        "said", [outcomes.Unknown("throttled"), outcomes.Corrupt("bad manifest"), None]
    )
    def test_a_registry_that_could_not_tell_is_unknown(self, said: outcomes.Outcome | None) -> None:
        answers = {} if said is None else {BY_DIGEST: said}
        assert state(answers).state is audit.State.UNKNOWN

    def test_a_tag_the_registry_could_not_tell_about_is_unknown(self) -> None:
        finding = state({BY_DIGEST: outcomes.Found(OLD, MEDIA), BY_TAG: outcomes.Unknown("slow")})
        assert finding.state is audit.State.UNKNOWN

    def test_an_image_by_digest_only_is_current_when_the_digest_exists(self) -> None:
        by_digest = audit.Running(**{**tagged().__dict__, "tag": None})
        assert (
            state({BY_DIGEST: outcomes.Found(OLD, MEDIA)}, by_digest).state is audit.State.CURRENT
        )


class TestReports:
    def test_counts_are_per_namespace_owner_kind_and_state_only(self) -> None:
        gone = outcomes.Missing("ImageNotFound", "no")
        found = [
            audit.classify(tagged(OLD), 3, {BY_DIGEST: gone}),
            audit.classify(tagged(NEW), 1, {}),
        ]
        assert audit.counts(found) == {
            ("shop", "Deployment", audit.State.GONE): 1,
            ("shop", "Deployment", audit.State.UNKNOWN): 1,
        }

    def test_a_gone_warning_names_container_digest_and_what_to_do(self) -> None:
        finding = audit.classify(tagged(), 3, {BY_DIGEST: outcomes.Missing("ImageNotFound", "no")})
        message = audit.warning_message(finding)
        assert "container app" in message
        assert OLD in message
        assert "3 pods run" in message
        assert "rollout restart deployment/web" in message

    def test_an_archived_warning_says_how_to_restore(self) -> None:
        finding = audit.classify(
            tagged(),
            1,
            {BY_DIGEST: outcomes.Archived("ARCHIVED", "aws ecr update-image-storage-class …")},
        )
        assert "update-image-storage-class" in audit.warning_message(finding)

    def test_findings_are_sorted_for_a_stable_table(self) -> None:
        taken = inventory(pod(namespace="b"), pod(namespace="a"))
        assert [f.running.namespace for f in audit.findings(taken, {})] == ["a", "b"]


class TestLifecyclePreviews:
    def test_an_existing_digest_the_policy_would_expire_is_expiring(self) -> None:
        found = outcomes.Found(OLD, MEDIA)
        finding = audit.classify(tagged(), 1, {BY_DIGEST: found, BY_TAG: found}, "EXPIRE")
        assert finding.state is audit.State.EXPIRING
        assert "would expire it" in finding.detail

    def test_a_digest_the_policy_would_archive_is_expiring_too(self) -> None:
        found = outcomes.Found(OLD, MEDIA)
        moved = outcomes.Found(NEW, MEDIA)
        finding = audit.classify(tagged(), 1, {BY_DIGEST: found, BY_TAG: moved}, "TRANSITION")
        assert finding.state is audit.State.EXPIRING
        assert "move to the archive" in finding.detail
        assert finding.tag_digest == NEW

    def test_a_gone_digest_stays_gone_whatever_the_preview(self) -> None:
        finding = audit.classify(
            tagged(), 1, {BY_DIGEST: outcomes.Missing("ImageNotFound", "no")}, "EXPIRE"
        )
        assert finding.state is audit.State.GONE

    def test_previews_are_read_for_existing_digests_of_ecr_repositories_only(self) -> None:
        found = outcomes.Found(OLD, MEDIA)
        elsewhere = audit.Running(
            **{**tagged().__dict__, "repository": outcomes.Repository("ghcr.io", "shop/api")}
        )
        findings = [
            audit.classify(tagged(OLD), 1, {BY_DIGEST: found, BY_TAG: found}),
            audit.classify(tagged(NEW), 1, {}),
            audit.classify(elsewhere, 1, {elsewhere.digest_query: found}),
        ]
        assert audit.preview_digests(findings) == {REPO: {OLD}}
