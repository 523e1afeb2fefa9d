"""The running-image audit against real peers: boto3 over HTTP to the ECR stub (which
counts requests) and to the moto ECR server, and `digestguard audit` against the real
apiserver of the local control plane."""

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support import cluster, ecr_emulator
from tests.support.controlplane import ControlPlane
from tests.support.ecr_stub import EcrStub
from webhook import names
from webhook.core import references
from webhook.registries import ecr, oci, routing
from webhook.serving import audit

HOST = ecr_emulator.registry_host()
DOCKER_V2 = ecr_emulator.DOCKER_MANIFEST


def manifest(seed: str) -> bytes:
    return ecr_emulator.docker_manifest(seed=seed)


def digest_of(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def pinned_pod(
    name: str, repository: str, digest: str, tag: str = "v1", deployment: str = ""
) -> dict[str, Any]:
    """A pod as the webhook leaves it: pinned, its original image in the annotation; of a
    Deployment's ReplicaSet when `deployment` is given."""
    original = f"{HOST}/{repository}:{tag}"
    owned: dict[str, Any] = {}
    if deployment:
        owned = {
            "labels": {"pod-template-hash": "5d8f7c9b6"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{deployment}-5d8f7c9b6",
                    "uid": f"{deployment}-rs-uid",
                    "controller": True,
                }
            ],
        }
    return {
        "metadata": {
            **owned,
            "name": name,
            "namespace": "shop",
            "annotations": {
                names.ANNOTATION_ORIGINAL_IMAGES: json.dumps({"containers/app": original})
            },
        },
        "spec": {"containers": [{"name": "app", "image": f"{original}@{digest}"}]},
        "status": {"phase": "Running"},
    }


@pytest.fixture
def stub() -> Iterator[EcrStub]:
    with EcrStub() as running:
        yield running


def auditor_of(url: str, pods: list[dict[str, Any]]) -> audit.Auditor:
    calls = audit.CallCounter()
    oci_client = oci.OciClient(on_request=calls.count)
    client_ = routing.RoutingClient(
        ecr.EcrClient(endpoint_url=url, session=ecr_emulator.session(), on_request=calls.count),
        oci_client,
    )
    # Pages of 100, as the apiserver would page a listing.
    pages = [pods[i : i + 100] for i in range(0, len(pods), 100)]
    return audit.Auditor(client_, calls, pages=lambda namespace: iter(pages))


def test_one_batch_get_image_per_repository_per_100_image_ids_whatever_the_pods(
    stub: EcrStub,
) -> None:
    pods = []
    for index in range(250):
        digest = stub.add_image("shop/api", None, manifest(f"api-{index}"), DOCKER_V2)
        # Three replicas of each: pods do not add calls, distinct digests do.
        pods += [
            pinned_pod(f"api-{index}-{replica}", "shop/api", digest, deployment="api")
            for replica in range(3)
        ]
    stub.add_image("shop/api", "v1", manifest("api-0"), DOCKER_V2)
    web = stub.add_image("shop/web", "v1", manifest("web"), DOCKER_V2)
    pods += [
        pinned_pod(f"web-{replica}", "shop/web", web, deployment="web") for replica in range(40)
    ]

    report = auditor_of(stub.url, pods).run()

    calls = stub.requests("BatchGetImage")
    per_repository: dict[str, list[int]] = {}
    for call in calls:
        body = call["body"]
        per_repository.setdefault(body["repositoryName"], []).append(len(body["imageIds"]))
    # 250 digests + 1 tag = 251 ids: 3 requests; 1 digest + 1 tag: 1 request.
    assert sorted(per_repository["shop/api"]) == [51, 100, 100]
    assert per_repository["shop/web"] == [2]
    assert report.registry_calls == {"BatchGetImage": 4}
    assert report.pods == 790
    assert len(report.findings) == 251
    assert {f.running.owner.kind for f in report.findings} == {"Deployment"}
    states = report.states()
    assert states["current"] == 2  # api-0 (the tag's digest) and web
    assert states["tag-moved"] == 249


def test_every_cycle_asks_the_registry_afresh_so_a_deleted_digest_is_seen_at_once(
    stub: EcrStub,
) -> None:
    digest = stub.add_image("shop/api", "v1", manifest("api"), DOCKER_V2)
    auditor = auditor_of(stub.url, [pinned_pod("api-0", "shop/api", digest)])
    assert [f.state.value for f in auditor.run().findings] == ["current"]
    stub.configure(images={"shop/api": {}})
    (finding,) = auditor.run().findings
    assert finding.state.value == "gone"
    assert "ImageNotFound" in finding.detail
    assert len(stub.requests("BatchGetImage")) == 2


def test_an_archived_digest_is_reported_archived_through_describe_images(stub: EcrStub) -> None:
    digest = stub.add_image("shop/api", "v1", manifest("api"), DOCKER_V2)
    stub.configure(archived={digest: "ARCHIVED"})
    report = auditor_of(stub.url, [pinned_pod("api-0", "shop/api", digest)]).run()
    (finding,) = report.findings
    assert finding.state.value == "archived"
    assert "update-image-storage-class" in finding.detail
    assert report.registry_calls == {"BatchGetImage": 1, "DescribeImages": 1}


def test_a_throttled_registry_is_unknown_not_gone(stub: EcrStub) -> None:
    digest = stub.add_image("shop/api", "v1", manifest("api"), DOCKER_V2)
    stub.configure(always="AccessDeniedException")
    (finding,) = auditor_of(stub.url, [pinned_pod("api-0", "shop/api", digest)]).run().findings
    assert finding.state.value == "unknown"
    assert "ecr:BatchGetImage" in finding.detail


def lifecycle_auditor(url: str, pods: list[dict[str, Any]]) -> audit.Auditor:
    calls = audit.CallCounter()
    ecr_client = ecr.EcrClient(
        endpoint_url=url, session=ecr_emulator.session(), on_request=calls.count
    )
    return audit.Auditor(
        routing.RoutingClient(ecr_client, oci.OciClient(on_request=calls.count)),
        calls,
        pages=lambda namespace: iter([pods]),
        lifecycle=lambda repository, digests, timeout: ecr_client.lifecycle_preview(
            repository, digests, timeout=timeout
        ),
    )


def test_a_running_digest_the_lifecycle_policy_would_expire_is_expiring(stub: EcrStub) -> None:
    doomed = stub.add_image("shop/api", None, manifest("api old"), DOCKER_V2)
    kept = stub.add_image("shop/api", "v1", manifest("api"), DOCKER_V2)
    unpolicied = stub.add_image("shop/web", "v1", manifest("web"), DOCKER_V2)
    stub.configure(
        lifecycle_previews={"shop/api": {doomed: "EXPIRE", "sha256:" + "0" * 64: "EXPIRE"}},
        preview_polls_in_progress=1,
    )
    pods = [
        pinned_pod("old", "shop/api", doomed),
        pinned_pod("new", "shop/api", kept),
        pinned_pod("web", "shop/web", unpolicied),
    ]
    report = lifecycle_auditor(stub.url, pods).run()
    states = {f.running.owner.name: f.state.value for f in report.findings}
    assert states == {"old": "expiring", "new": "current", "web": "current"}
    assert report.lifecycle_problems == ()
    # shop/web has no policy: one start, refused; shop/api: one start, polled until done.
    assert report.registry_calls == {
        "BatchGetImage": 2,
        "StartLifecyclePolicyPreview": 2,
        "GetLifecyclePolicyPreview": 2,
    }
    (asked,) = [r["body"] for r in stub.requests("GetLifecyclePolicyPreview")][-1:]
    assert sorted(i["imageDigest"] for i in asked["imageIds"]) == sorted([doomed, kept])


def test_a_preview_someone_else_started_is_not_read(stub: EcrStub) -> None:
    digest = stub.add_image("shop/api", "v1", manifest("api"), DOCKER_V2)
    stub.configure(
        lifecycle_previews={"shop/api": {digest: "EXPIRE"}}, previews_running=["shop/api"]
    )
    report = lifecycle_auditor(stub.url, [pinned_pod("api", "shop/api", digest)]).run()
    assert [f.state.value for f in report.findings] == ["current"]
    (problem,) = report.lifecycle_problems
    assert "already in progress" in problem
    assert stub.requests("GetLifecyclePolicyPreview") == []


# --------------------------------------------------------------------------
# digestguard audit, against the apiserver and the moto ECR server
# --------------------------------------------------------------------------


def run_audit(kubeconfig: Path, moto_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | ecr_emulator.FAKE_CREDENTIALS | {"AWS_DEFAULT_REGION": ecr_emulator.REGION}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "audit",
            "--kubeconfig",
            str(kubeconfig),
            "--ecr-endpoint-url",
            moto_url,
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = cluster.unique("audit")
    with control_plane.new_api_client() as api:
        cluster.create_namespace(api, name)
        yield name
        cluster.delete_namespace(api, name)


@pytest.fixture
def core(control_plane: ControlPlane) -> Iterator[client.CoreV1Api]:
    with control_plane.new_api_client() as api:
        yield client.CoreV1Api(api)


def create(core: client.CoreV1Api, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": "v1", "kind": "Pod", **pod}
    body["metadata"] = {**pod["metadata"], "namespace": namespace}
    body.pop("status", None)
    made = cluster.call(core.create_namespaced_pod, namespace, body)
    assert made.status == 201, made.body
    return made.body


def test_the_audit_command_reports_each_running_image_and_exits_1_once_one_is_gone(
    control_plane: ControlPlane,
    moto_server: ecr_emulator.MotoServer,
    namespace: str,
    core: client.CoreV1Api,
) -> None:
    ecr_client = ecr_emulator.ecr_client(moto_server.url)
    repository = f"audit/{uuid.uuid4().hex[:8]}"
    first = ecr_emulator.seed_image(ecr_client, repository, "v1", manifest(repository), DOCKER_V2)
    create(core, namespace, pinned_pod("api", repository, first))

    current = run_audit(control_plane.kubeconfig_path, moto_server.url, "-n", namespace)
    assert current.returncode == 0, current.stderr
    header, row = current.stdout.splitlines()
    assert header.split() == ["NAMESPACE", "OWNER", "CONTAINER", "IMAGE", "DIGEST", "STATE"]
    assert row.split() == [namespace, "Pod/api", "app", f"{HOST}/{repository}:v1", first, "current"]

    # The only tag moves: moto deletes the image the pod runs.
    moved = ecr_emulator.seed_image(
        ecr_client, repository, "v1", manifest(f"{repository} again"), DOCKER_V2
    )
    gone = run_audit(control_plane.kubeconfig_path, moto_server.url, "-n", namespace, "-o", "json")
    assert gone.returncode == 1, gone.stderr
    document = json.loads(gone.stdout)
    (finding,) = document["findings"]
    assert finding["state"] == "gone"
    assert finding["digest"] == first
    assert finding["owner"] == {"kind": "Pod", "name": "api"}
    # A digest ECR did not return makes the client look for a pull-through cache rule once.
    assert document["registryCalls"] == {"BatchGetImage": 1, "DescribePullThroughCacheRules": 1}
    assert moved != first


def test_an_image_admitted_before_digestguard_is_audited_by_its_status_image_id(
    control_plane: ControlPlane,
    moto_server: ecr_emulator.MotoServer,
    namespace: str,
    core: client.CoreV1Api,
) -> None:
    ecr_client = ecr_emulator.ecr_client(moto_server.url)
    repository = f"audit/{uuid.uuid4().hex[:8]}"
    digest = ecr_emulator.seed_image(ecr_client, repository, "v1", manifest(repository), DOCKER_V2)
    image = f"{HOST}/{repository}:v1"
    create(
        core,
        namespace,
        {"metadata": {"name": "old"}, "spec": {"containers": [{"name": "app", "image": image}]}},
    )
    status = {
        "status": {
            "containerStatuses": [
                {
                    "name": "app",
                    "image": image,
                    "imageID": f"docker-pullable://{HOST}/{repository}@{digest}",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ContainerCreating"}},
                }
            ]
        }
    }
    patched = cluster.call(core.patch_namespaced_pod_status, "old", namespace, status)
    assert patched.status == 200, patched.body

    result = run_audit(
        control_plane.kubeconfig_path, moto_server.url, "-n", namespace, "-o", "json"
    )
    assert result.returncode == 0, result.stderr
    (finding,) = json.loads(result.stdout)["findings"]
    assert (finding["image"], finding["digest"], finding["state"]) == (image, digest, "current")


def test_the_audit_command_says_why_it_cannot_list_pods_without_a_traceback(
    moto_server: ecr_emulator.MotoServer, tmp_path: Path
) -> None:
    unreachable = tmp_path / "kubeconfig"
    unreachable.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    result = run_audit(unreachable, moto_server.url, "--timeout", "5s")
    assert result.returncode == 2
    assert result.stderr.startswith("digestguard: cannot list pods in all namespaces:")
    assert "Traceback" not in result.stderr


def test_the_audit_command_says_why_the_registry_could_not_tell(
    control_plane: ControlPlane, namespace: str, core: client.CoreV1Api, stub: EcrStub
) -> None:
    digest = stub.add_image("audit/denied", "v1", manifest("denied"), DOCKER_V2)
    stub.configure(always="AccessDeniedException")
    create(core, namespace, pinned_pod("api", "audit/denied", digest))
    result = run_audit(control_plane.kubeconfig_path, stub.url, "-n", namespace)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "unknown"
    assert "1 running image(s) unknown" in result.stderr
    assert "grant the webhook's IAM role ecr:BatchGetImage" in result.stderr


def test_the_audit_command_reports_expiring_images_when_asked_to(
    control_plane: ControlPlane, namespace: str, core: client.CoreV1Api, stub: EcrStub
) -> None:
    digest = stub.add_image("audit/doomed", "v1", manifest("doomed"), DOCKER_V2)
    stub.configure(lifecycle_previews={"audit/doomed": {digest: "EXPIRE"}})
    create(core, namespace, pinned_pod("api", "audit/doomed", digest))
    plain = run_audit(control_plane.kubeconfig_path, stub.url, "-n", namespace)
    assert plain.stdout.split()[-1] == "current"
    assert stub.requests("StartLifecyclePolicyPreview") == []
    previewed = run_audit(
        control_plane.kubeconfig_path, stub.url, "-n", namespace, "--lifecycle-preview"
    )
    assert previewed.returncode == 0, previewed.stderr
    assert previewed.stdout.split()[-1] == "expiring"


def test_the_audit_command_refuses_a_missing_kubeconfig(
    moto_server: ecr_emulator.MotoServer, tmp_path: Path
) -> None:
    result = run_audit(tmp_path / "absent", moto_server.url)
    assert result.returncode == 64
    assert "cannot load the Kubernetes configuration" in result.stderr
    assert "Traceback" not in result.stderr


def test_references_the_audit_compares_are_canonical() -> None:
    # The status image ID of a Docker Hub image names it in full; the spec may not.
    assert references.parse("nginx:1").name == references.parse("docker.io/library/nginx").name
