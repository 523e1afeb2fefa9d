"""Know what is running: the periodic audit and `digestguard audit` on the real control
plane, with the ECR emulator.

A Deployment is pinned; its tag moves (the old image kept under a second tag, as ECR
keeps an untagged image and moto does not) and the next cycle says tag-moved; the
digest is deleted and the next cycle says gone, with one Warning Event on the
Deployment that later cycles do not repeat. Two webhook processes share the audit
Lease: only its holder audits, and the other takes over once the holder stops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from kubernetes import client

from tests.support import cluster, ecr_emulator
from tests.support.controlplane import ControlPlane
from webhook import names

pytestmark = pytest.mark.e2e

ECR_IMAGES = ["*.dkr.ecr.*.amazonaws.com/**"]
AUDIT_ARGS = ["--audit-interval", "1s", "--cache-ttl", "1s"]
IMAGES = "digestguard_audit_images"
CYCLES = "digestguard_audit_cycles_total"


def deployment(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "app", "image": image}],
                    "terminationGracePeriodSeconds": 0,
                },
            },
        },
    }


def audit_command(
    control_plane: ControlPlane, ecr: Any, namespace: str
) -> subprocess.CompletedProcess[str]:
    env = os.environ | ecr_emulator.FAKE_CREDENTIALS | {"AWS_DEFAULT_REGION": ecr_emulator.REGION}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "audit",
            "--kubeconfig",
            str(control_plane.kubeconfig_path),
            "--ecr-endpoint-url",
            ecr.url,
            "-n",
            namespace,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def images_in(webhook: cluster.LocalWebhook, namespace: str, state: str) -> float:
    return webhook.process.metric(IMAGES, namespace=namespace, owner_kind="Deployment", state=state)


def in_state(webhook: cluster.LocalWebhook, namespace: str, state: str) -> bool:
    return images_in(webhook, namespace, state) == 1


def gone_events(core: client.CoreV1Api, namespace: str, uid: str) -> list[dict[str, Any]]:
    listed = cluster.call(
        core.list_namespaced_event, namespace, field_selector=f"involvedObject.uid={uid}"
    )
    assert listed.status == 200, listed.body
    return [e for e in listed.body["items"] if e["reason"] == names.REASON_RUNNING_IMAGE_GONE]


def test_the_audit_reports_a_moved_tag_then_a_gone_digest_once_from_one_process_at_a_time(
    control_plane: ControlPlane,
    start_webhook: Any,
    ecr: Any,
    kube: Any,
    make_namespace: Any,
    make_policy: Any,
) -> None:
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    # The webhooks' own namespace, where the audit Lease lives.
    home = make_namespace(None)
    leader = start_webhook(namespace=home, extra_args=AUDIT_ARGS)
    cluster.eventually(
        "the first process to hold the audit Lease",
        lambda: leader.process.metric("digestguard_audit_leader") == 1,
        30,
    )
    # The same release's configurations, a second process: it waits for the Lease.
    follower = start_webhook(namespace=home, release=leader.release, extra_args=AUDIT_ARGS)
    namespace = make_namespace(leader)
    make_policy({"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(namespace)})

    repository = f"e2e/audit-{uuid.uuid4().hex[:6]}"
    first = ecr.push(repository, "v1")
    made = cluster.call(
        apps.create_namespaced_deployment,
        namespace,
        deployment("web", ecr.image(repository, "v1")),
    )
    assert made.status == 201, made.body
    web_uid = made.body["metadata"]["uid"]

    def pinned() -> list[dict[str, Any]] | None:
        pods = cluster.call(core.list_namespaced_pod, namespace).body["items"]
        return pods or None

    (pod,) = cluster.eventually("the Deployment's pod", pinned, 90)
    assert cluster.images_of(pod)["app"].endswith(f"@{first}")
    cluster.eventually(
        "the audit to find it current", lambda: in_state(leader, namespace, "current"), 60
    )

    # The tag moves; the image the pod runs stays, under a second tag.
    kept = ecr.client.batch_get_image(repositoryName=repository, imageIds=[{"imageTag": "v1"}])
    image = kept["images"][0]
    ecr.client.put_image(
        repositoryName=repository,
        imageManifest=image["imageManifest"],
        imageManifestMediaType=image["imageManifestMediaType"],
        imageDigest=first,
        imageTag="keep",
    )
    moved = ecr.push(repository, "v1")
    cluster.eventually(
        "the audit to see the tag moved", lambda: in_state(leader, namespace, "tag-moved"), 60
    )
    said = audit_command(control_plane, ecr, namespace)
    assert said.returncode == 0, said.stderr
    (finding,) = json.loads(said.stdout)["findings"]
    assert (finding["owner"], finding["state"]) == (
        {"kind": "Deployment", "name": "web"},
        "tag-moved",
    )
    assert (finding["digest"], finding["tagDigest"]) == (first, moved)
    assert gone_events(core, namespace, web_uid) == []

    # The digest the pod runs is deleted.
    deleted = ecr.client.batch_delete_image(
        repositoryName=repository, imageIds=[{"imageDigest": first}]
    )
    assert not deleted.get("failures"), deleted
    cluster.eventually(
        "the audit to see the digest gone", lambda: in_state(leader, namespace, "gone"), 60
    )
    (event,) = cluster.eventually(
        "the Warning Event on the Deployment",
        lambda: gone_events(core, namespace, web_uid) or None,
        30,
    )
    assert event["type"] == "Warning"
    assert event["involvedObject"]["kind"] == "Deployment"
    assert event["involvedObject"]["name"] == "web"
    assert first in event["message"]
    assert "container app" in event["message"]
    said = audit_command(control_plane, ecr, namespace)
    assert said.returncode == 1, said.stderr
    assert [f["state"] for f in json.loads(said.stdout)["findings"]] == ["gone"]

    # Later cycles still find it gone, and post nothing more.
    cycles = leader.process.metric(CYCLES, result="ok")
    cluster.eventually(
        "two more cycles", lambda: leader.process.metric(CYCLES, result="ok") >= cycles + 2, 60
    )
    assert in_state(leader, namespace, "gone")
    assert len(gone_events(core, namespace, web_uid)) == 1
    assert leader.process.metric("digestguard_audit_events_total") == 1

    # Only the Lease's holder audited.
    assert follower.process.metric("digestguard_audit_leader") == 0
    assert follower.process.metric(CYCLES) == 0
    assert follower.process.metric(IMAGES) == 0

    # Its holder stops and gives the Lease up: the other takes over.
    leader.stop()
    cluster.eventually(
        "the second process to audit", lambda: in_state(follower, namespace, "gone"), 60
    )
    assert follower.process.metric("digestguard_audit_leader") == 1
