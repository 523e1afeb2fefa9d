"""One rollout, one digest: pods the controller manager makes for one revision share
the digest its first pods were pinned to, after the tag has moved and the cache has
expired, whichever webhook process answers; a new revision moves to the new digest.

ECR is the moto emulator. moto deletes an image when its only tag moves away, where
ECR keeps it untagged: a second tag (`keep`) keeps the first image, as ECR would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from kubernetes import client

from tests.support import cluster
from webhook import names

pytestmark = pytest.mark.e2e

ECR_IMAGES = ["*.dkr.ecr.*.amazonaws.com/**"]
CACHE_TTL = 1.0
"""The webhooks' cache TTL here: a moved tag is seen after it."""
ARGUMENTS = ["--cache-ttl", f"{CACHE_TTL}s"]


def repository() -> str:
    return f"e2e/rollout-{uuid.uuid4().hex[:6]}"


def pod_template(app: str, image: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {
            "containers": [{"name": "app", "image": image}],
            "terminationGracePeriodSeconds": 0,
        },
    }


def deployment(name: str, image: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": pod_template(name, image),
        },
    }


def statefulset(name: str, image: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            # No kubelet here: pods never become ready, so they are made all at once.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": pod_template(name, image),
        },
    }


def job(name: str, image: str, parallelism: int) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "parallelism": parallelism,
            "completions": 10,
            "template": {
                **pod_template(name, image),
                "spec": {**pod_template(name, image)["spec"], "restartPolicy": "Never"},
            },
        },
    }


def pods_of(core: client.CoreV1Api, namespace: str, app: str) -> list[dict[str, Any]]:
    found = cluster.call(core.list_namespaced_pod, namespace, label_selector=f"app={app}")
    assert found.status == 200, found.body
    return [p for p in found.body["items"] if not p["metadata"].get("deletionTimestamp")]


def wait_for_pods(
    core: client.CoreV1Api,
    namespace: str,
    app: str,
    count: int,
    which: Callable[[dict[str, Any]], bool] = lambda _: True,
) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        made = [p for p in pods_of(core, namespace, app) if which(p)]
        return made if len(made) >= count else None

    return cluster.eventually(f"{count} pods of {app}", enough, 90)


def digests(pods: list[dict[str, Any]]) -> set[str]:
    return {cluster.images_of(p)["app"].partition("@")[2] for p in pods}


def template_hash(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["labels"].get("pod-template-hash", ""))


class Scene(NamedTuple):
    webhook: cluster.LocalWebhook
    namespace: str
    repo: str
    first: str
    """The digest `v1` points to at first."""
    image: str
    """`repo:v1`, as the workloads write it."""


@pytest.fixture
def set_up(
    start_webhook: Any, make_namespace: Any, make_policy: Any, ecr: Any
) -> Callable[..., Scene]:
    """`set_up(**policy_fields)`: a webhook with a short cache TTL, a namespace it sees, a
    Mutate policy there (with those fields) and an image pushed as `v1`."""

    def make(**policy: Any) -> Scene:
        webhook = start_webhook(extra_args=ARGUMENTS)
        namespace = make_namespace(webhook)
        make_policy(
            {"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(namespace), **policy}
        )
        repo = repository()
        first = ecr.push(repo, "v1")
        return Scene(webhook, namespace, repo, first, ecr.image(repo, "v1"))

    return make


@pytest.fixture
def core(kube: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


@pytest.fixture
def apps(kube: Any) -> client.AppsV1Api:
    return client.AppsV1Api(kube)


def move_tag(ecr: Any, repo: str, tag: str, *, keep_old: bool) -> str:
    """Push a new image under `tag`; the old one stays (tagged `keep`) when `keep_old`."""
    if keep_old:
        old = ecr.client.batch_get_image(repositoryName=repo, imageIds=[{"imageTag": tag}])
        image = old["images"][0]
        ecr.client.put_image(
            repositoryName=repo,
            imageManifest=image["imageManifest"],
            imageManifestMediaType=image["imageManifestMediaType"],
            imageDigest=image["imageId"]["imageDigest"],
            imageTag="keep",
        )
    new = ecr.push(repo, tag)
    # Past the cache TTL, every webhook process sees the moved tag.
    time.sleep(CACHE_TTL * 2)
    return new


def a_bare_pod_is_pinned_to(core: client.CoreV1Api, namespace: str, image: str) -> str:
    """The digest a pod of no controller gets now: the tag's, as the webhook sees it."""
    name = f"bare-{uuid.uuid4().hex[:6]}"
    made = cluster.call(core.create_namespaced_pod, namespace, cluster.pod(name, image))
    assert made.status == 201, made.body
    return cluster.images_of(made.body)["c0"].partition("@")[2]


def test_a_replicaset_scaled_up_after_its_tag_moved_stays_on_one_digest_and_a_restart_moves_it(
    ecr: Any,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    set_up: Callable[..., Scene],
) -> None:
    webhook, namespace, repo, first, image = set_up()
    made = cluster.call(apps.create_namespaced_deployment, namespace, deployment("web", image, 3))
    assert made.status == 201, made.body
    assert digests(wait_for_pods(core, namespace, "web", 3)) == {first}

    moved = move_tag(ecr, repo, "v1", keep_old=True)
    assert a_bare_pod_is_pinned_to(core, namespace, image) == moved
    scaled = cluster.call(
        apps.patch_namespaced_deployment_scale, "web", namespace, {"spec": {"replicas": 6}}
    )
    assert scaled.status == 200, scaled.body

    six = wait_for_pods(core, namespace, "web", 6)
    assert len({template_hash(p) for p in six}) == 1
    assert digests(six) == {first}, "one ReplicaSet, one digest"
    assert webhook.process.metric("digestguard_rollout_pins_total", how="revision") >= 3

    restarted = cluster.call(
        apps.patch_namespaced_deployment,
        "web",
        namespace,
        {"spec": {"template": {"metadata": {"annotations": {"restartedAt": "now"}}}}},
    )
    assert restarted.status == 200, restarted.body
    old_hash = template_hash(six[0])
    newer = wait_for_pods(core, namespace, "web", 1, lambda p: template_hash(p) != old_hash)
    assert digests(newer) == {moved}, "a new revision resolves afresh"


def test_a_second_webhook_process_pins_a_revisions_new_pods_to_what_the_first_pinned(
    start_webhook: Any,
    ecr: Any,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    set_up: Callable[..., Scene],
) -> None:
    first_webhook, namespace, repo, first, image = set_up()
    made = cluster.call(apps.create_namespaced_deployment, namespace, deployment("web", image, 2))
    assert made.status == 201, made.body
    assert digests(wait_for_pods(core, namespace, "web", 2)) == {first}
    moved = move_tag(ecr, repo, "v1", keep_old=True)

    # The same release's configurations, now pointed at a process that never saw the
    # revision: it reads what the revision's pods run from the apiserver.
    second_webhook = start_webhook(release=first_webhook.release, extra_args=ARGUMENTS)
    assert a_bare_pod_is_pinned_to(core, namespace, image) == moved
    scaled = cluster.call(
        apps.patch_namespaced_deployment_scale, "web", namespace, {"spec": {"replicas": 4}}
    )
    assert scaled.status == 200, scaled.body

    assert digests(wait_for_pods(core, namespace, "web", 4)) == {first}
    assert second_webhook.process.metric("digestguard_rollout_pins_total", how="revision") >= 2


def test_a_statefulset_scaled_up_after_its_tag_moved_stays_on_its_revisions_digest(
    ecr: Any,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    set_up: Callable[..., Scene],
) -> None:
    _, namespace, repo, first, image = set_up()
    made = cluster.call(apps.create_namespaced_stateful_set, namespace, statefulset("db", image, 2))
    assert made.status == 201, made.body
    assert digests(wait_for_pods(core, namespace, "db", 2)) == {first}

    moved = move_tag(ecr, repo, "v1", keep_old=True)
    assert a_bare_pod_is_pinned_to(core, namespace, image) == moved
    scaled = cluster.call(
        apps.patch_namespaced_stateful_set_scale, "db", namespace, {"spec": {"replicas": 4}}
    )
    assert scaled.status == 200, scaled.body

    four = wait_for_pods(core, namespace, "db", 4)
    assert {p["metadata"]["labels"]["controller-revision-hash"] for p in four} == {
        four[0]["metadata"]["labels"]["controller-revision-hash"]
    }
    assert digests(four) == {first}


def test_a_job_whose_parallelism_grows_after_its_tag_moved_stays_on_one_digest(
    ecr: Any,
    core: client.CoreV1Api,
    kube: Any,
    set_up: Callable[..., Scene],
) -> None:
    _, namespace, repo, first, image = set_up()
    batch = client.BatchV1Api(kube)
    made = cluster.call(batch.create_namespaced_job, namespace, job("migrate", image, 1))
    assert made.status == 201, made.body
    assert digests(wait_for_pods(core, namespace, "migrate", 1)) == {first}

    moved = move_tag(ecr, repo, "v1", keep_old=True)
    assert a_bare_pod_is_pinned_to(core, namespace, image) == moved
    grown = cluster.call(
        batch.patch_namespaced_job, "migrate", namespace, {"spec": {"parallelism": 3}}
    )
    assert grown.status == 200, grown.body

    assert digests(wait_for_pods(core, namespace, "migrate", 3)) == {first}


def test_a_revision_whose_digest_is_gone_pins_its_next_pod_afresh_and_warns_on_the_owner(
    ecr: Any,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    set_up: Callable[..., Scene],
) -> None:
    webhook, namespace, repo, first, image = set_up()
    made = cluster.call(apps.create_namespaced_deployment, namespace, deployment("web", image, 1))
    assert made.status == 201, made.body
    (running,) = wait_for_pods(core, namespace, "web", 1)
    assert digests([running]) == {first}

    # The only tag moves away: the emulator deletes the first image, as a lifecycle
    # policy or a person might.
    moved = move_tag(ecr, repo, "v1", keep_old=False)
    scaled = cluster.call(
        apps.patch_namespaced_deployment_scale, "web", namespace, {"spec": {"replicas": 2}}
    )
    assert scaled.status == 200, scaled.body

    both = wait_for_pods(core, namespace, "web", 2)
    new = [p for p in both if p["metadata"]["name"] != running["metadata"]["name"]]
    assert digests(new) == {moved}
    owner = running["metadata"]["ownerReferences"][0]

    def warning() -> list[dict[str, Any]] | None:
        listed = cluster.call(
            core.list_namespaced_event,
            namespace,
            field_selector=f"involvedObject.uid={owner['uid']}",
        ).body["items"]
        found = [e for e in listed if e["reason"] == names.REASON_REVISION_DIGEST_GONE]
        return found or None

    (event,) = cluster.eventually("the Warning Event on the ReplicaSet", warning, 30)
    assert event["type"] == "Warning"
    assert event["involvedObject"]["kind"] == "ReplicaSet"
    assert first in event["message"]
    assert moved in event["message"]
    assert webhook.process.metric("digestguard_rollout_pins_total", how="gone") == 1


def test_pin_scope_pod_pins_a_revisions_new_pods_to_the_tags_digest_now(
    ecr: Any,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    set_up: Callable[..., Scene],
) -> None:
    _, namespace, repo, first, image = set_up(pinScope="Pod")
    made = cluster.call(apps.create_namespaced_deployment, namespace, deployment("web", image, 1))
    assert made.status == 201, made.body
    assert digests(wait_for_pods(core, namespace, "web", 1)) == {first}

    moved = move_tag(ecr, repo, "v1", keep_old=True)
    scaled = cluster.call(
        apps.patch_namespaced_deployment_scale, "web", namespace, {"spec": {"replicas": 2}}
    )
    assert scaled.status == 200, scaled.body

    assert digests(wait_for_pods(core, namespace, "web", 2)) == {first, moved}
