"""ECR as it behaves, through the real apiserver: archived images and pull-through cache
repositories whose images ECR has not imported.

The webhook process talks to the ECR-protocol stub (moto knows neither the archive nor
pull-through cache rules), whose rule caches an upstream served by the OCI stub; the
chart's webhook configurations send the apiserver's pods to it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.support import cluster, ecr_emulator, ecr_stub, oci_stub
from webhook import names

pytestmark = pytest.mark.e2e

ECR_IMAGES = ["*.dkr.ecr.*.amazonaws.com/**"]
CACHED = "docker-hub/library/nginx"


@pytest.fixture
def core(kube: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


@pytest.fixture
def upstream() -> Iterator[oci_stub.OciStub]:
    with oci_stub.OciStub() as running:
        yield running


@pytest.fixture
def stub(upstream: oci_stub.OciStub) -> Iterator[ecr_stub.EcrStub]:
    with ecr_stub.EcrStub() as running:
        running.configure(
            pull_through_rules=[
                {"ecrRepositoryPrefix": "docker-hub", "upstreamRegistryUrl": upstream.host}
            ],
            import_refused="AccessDeniedException",
        )
        yield running


@pytest.fixture
def webhook(
    start_webhook: Any, stub: ecr_stub.EcrStub, upstream: oci_stub.OciStub
) -> cluster.LocalWebhook:
    started: cluster.LocalWebhook = start_webhook(
        ecr_endpoint_url=stub.url, extra_args=["--insecure-registries", upstream.host]
    )
    return started


def image(repository: str, tag: str) -> str:
    return f"{ecr_emulator.registry_host()}/{repository}:{tag}"


def only_upstream_has(stub: ecr_stub.EcrStub, upstream: oci_stub.OciStub, tag: str) -> None:
    manifest = ecr_emulator.docker_manifest(seed=tag)
    upstream.manifests[("library/nginx", tag)] = (manifest, ecr_emulator.DOCKER_MANIFEST)
    stub.configure(upstream={CACHED: {tag: [manifest.decode(), ecr_emulator.DOCKER_MANIFEST]}})


def test_an_archived_image_is_denied_as_archived_with_the_restore_command(
    webhook: cluster.LocalWebhook,
    stub: ecr_stub.EcrStub,
    core: Any,
    make_namespace: Any,
    make_policy: Any,
) -> None:
    namespace = make_namespace(webhook)
    make_policy(
        {
            "images": ECR_IMAGES,
            "namespaceSelector": cluster.only_in(namespace),
            "onResolveError": "Allow",
        }
    )
    tag = f"v-{uuid.uuid4().hex[:6]}"
    manifest = ecr_emulator.docker_manifest(seed=tag)
    stub.add_image("team/app", tag, manifest, ecr_emulator.DOCKER_MANIFEST)
    stub.configure(archived={tag: "ARCHIVED"})

    denied = cluster.call(
        core.create_namespaced_pod, namespace, cluster.pod("app", image("team/app", tag))
    )

    assert denied.status == 403, denied.message
    assert names.REASON_IMAGE_ARCHIVED in denied.message
    assert (
        "aws ecr update-image-storage-class --registry-id 123456789012 --region us-east-1"
        f" --repository-name team/app --image-id imageDigest={ecr_emulator.digest_of(manifest)}"
        " --target-storage-class STANDARD"
    ) in denied.message


def test_mutate_admits_a_pull_through_tag_ecr_has_not_imported_by_tag_with_a_warning(
    webhook: cluster.LocalWebhook,
    stub: ecr_stub.EcrStub,
    upstream: oci_stub.OciStub,
    core: Any,
    make_namespace: Any,
    make_policy: Any,
) -> None:
    namespace = make_namespace(webhook)
    make_policy({"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(namespace)})
    tag = f"1.{uuid.uuid4().hex[:6]}"
    only_upstream_has(stub, upstream, tag)
    reference = image(CACHED, tag)

    admitted = cluster.call(core.create_namespaced_pod, namespace, cluster.pod("app", reference))

    assert admitted.status == 201, admitted.message
    assert cluster.images_of(admitted.body) == {"c0": reference}, "not pinned"
    assert any(
        names.REASON_NOT_IMPORTED in w and "docker-hub/ ->" in w for w in admitted.warnings
    ), admitted.warnings


def test_enforce_denies_a_pull_through_tag_ecr_has_not_imported_unless_first_pulls_are_allowed(
    webhook: cluster.LocalWebhook,
    stub: ecr_stub.EcrStub,
    upstream: oci_stub.OciStub,
    core: Any,
    make_namespace: Any,
    make_policy: Any,
) -> None:
    strict, allowing = make_namespace(webhook), make_namespace(webhook)
    make_policy(
        {"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(strict), "action": "Enforce"}
    )
    make_policy(
        {
            "images": ECR_IMAGES,
            "namespaceSelector": cluster.only_in(allowing),
            "action": "Enforce",
            "allowPullThroughFirstPull": True,
        }
    )
    tag = f"1.{uuid.uuid4().hex[:6]}"
    only_upstream_has(stub, upstream, tag)
    pod = cluster.pod("app", image(CACHED, tag))

    denied = cluster.call(core.create_namespaced_pod, strict, pod)
    admitted = cluster.call(core.create_namespaced_pod, allowing, pod)

    assert denied.status == 403, denied.message
    assert names.REASON_TAG_NOT_PINNED in denied.message
    assert "allowPullThroughFirstPull" in denied.message
    assert admitted.status == 201, admitted.message
    assert any(names.REASON_NOT_IMPORTED in w for w in admitted.warnings), admitted.warnings


def test_a_pull_through_tag_the_upstream_does_not_have_is_denied_as_missing(
    webhook: cluster.LocalWebhook,
    stub: ecr_stub.EcrStub,
    core: Any,
    make_namespace: Any,
    make_policy: Any,
) -> None:
    namespace = make_namespace(webhook)
    make_policy({"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(namespace)})
    stub.add_repository(CACHED)

    denied = cluster.call(
        core.create_namespaced_pod, namespace, cluster.pod("app", image(CACHED, "no-such-tag"))
    )

    assert denied.status == 403, denied.message
    assert names.REASON_IMAGE_MISSING in denied.message
    assert "neither ECR nor the upstream has it" in denied.message
