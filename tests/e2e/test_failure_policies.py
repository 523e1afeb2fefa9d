"""When the webhook or ECR is down: the apiserver's failurePolicy and the policy's
onResolveError decide, and every request gets its answer within timeoutSeconds.

Each test runs its own webhook process (one is stopped, one talks to an ECR that
never answers), registered by the chart's configurations for its namespaces only.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.support import cluster, ecr_stub
from webhook import names

pytestmark = pytest.mark.e2e

ECR_IMAGES = ["*.dkr.ecr.*.amazonaws.com/**"]


@pytest.fixture
def core(kube: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


@pytest.fixture
def hanging_ecr() -> Iterator[ecr_stub.EcrStub]:
    """An ECR endpoint that accepts connections and never answers."""
    with ecr_stub.EcrStub() as stub:
        stub.configure(always=ecr_stub.HANG)
        yield stub


def test_with_the_webhook_stopped_failure_policy_fail_rejects_and_ignore_admits(
    start_webhook: Any, ecr: Any, core: Any, make_namespace: Any, make_policy: Any
) -> None:
    webhook: cluster.LocalWebhook = start_webhook()
    namespace = make_namespace(webhook)
    make_policy({"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(namespace)})
    repo = f"e2e/down-{uuid.uuid4().hex[:6]}"
    digest = ecr.push(repo, "v1")
    pod = cluster.pod("app", ecr.image(repo, "v1"))
    cluster.eventually(
        "the running webhook to pin the pod",
        lambda: (
            cluster.images_of(
                cluster.call(core.create_namespaced_pod, namespace, pod, dry_run="All").body
            )
            == {"c0": ecr.image(repo, "v1", digest)}
        ),
    )

    webhook.process.stop()
    refused = cluster.call(core.create_namespaced_pod, namespace, pod)

    assert refused.status == 500, refused.message
    assert 'failed calling webhook "mutate-pods.digestguard.io"' in refused.message
    assert cluster.call(core.read_namespaced_pod, "app", namespace).status == 404

    webhook.register(failurePolicy="Ignore")

    def created() -> cluster.Answer | None:
        answer = cluster.call(core.create_namespaced_pod, namespace, pod)
        return answer if answer.ok else None

    admitted = cluster.eventually("failurePolicy Ignore to reach the apiserver", created)
    assert admitted.status == 201
    assert cluster.images_of(admitted.body) == {"c0": ecr.image(repo, "v1")}, "admitted unchecked"


def test_with_ecr_unreachable_on_resolve_error_deny_rejects_and_allow_admits_with_a_warning(
    start_webhook: Any,
    hanging_ecr: ecr_stub.EcrStub,
    ecr: Any,
    core: Any,
    make_namespace: Any,
    make_policy: Any,
) -> None:
    webhook: cluster.LocalWebhook = start_webhook(
        ecr_endpoint_url=hanging_ecr.url,
        extra_args=["--resolve-deadline", "2s"],
        values={"resolver": {"deadline": "2s"}},
        webhook_values={"timeoutSeconds": 10},
    )
    strict, lenient = make_namespace(webhook), make_namespace(webhook)
    deny = make_policy(
        {
            "images": ECR_IMAGES,
            "namespaceSelector": cluster.only_in(strict),
            "onResolveError": "Deny",
        }
    )
    allow = make_policy(
        {
            "images": ECR_IMAGES,
            "namespaceSelector": cluster.only_in(lenient),
            "onResolveError": "Allow",
        }
    )
    image = ecr.image(f"e2e/unreachable-{uuid.uuid4().hex[:6]}", "v1")

    denied = cluster.call(core.create_namespaced_pod, strict, cluster.pod("app", image))
    admitted = cluster.call(core.create_namespaced_pod, lenient, cluster.pod("app", image))

    # The webhook's own answers (not the apiserver giving up on it, which would also be
    # a rejection under failurePolicy Fail): both came back within timeoutSeconds.
    assert denied.status == 403, denied.message
    assert 'admission webhook "mutate-pods.digestguard.io" denied' in denied.message
    assert names.REASON_REGISTRY_UNAVAILABLE in denied.message
    assert f"DigestPolicy {deny}" in denied.message
    assert admitted.status == 201, admitted.message
    assert cluster.images_of(admitted.body) == {"c0": image}
    assert any(
        names.REASON_REGISTRY_UNAVAILABLE in w and f"DigestPolicy {allow}" in w
        for w in admitted.warnings
    ), admitted.warnings
    assert hanging_ecr.requests("BatchGetImage"), "the webhook did ask ECR"
