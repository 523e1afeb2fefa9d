"""A pod's own pull secrets (`--pod-pull-secrets`): the pod's `imagePullSecrets`, or its
ServiceAccount's, read in the pod's own namespace, open a private repository of a real
CNCF distribution registry for that pod only. Namespace A with the right Secret is
pinned; namespace B without it is denied, naming the registry and the Secret names
tried, right after A was pinned (no answer crosses namespaces through the cache), and
B cannot borrow A's Secret by naming it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.support import cluster, oci_registry

pytestmark = pytest.mark.e2e

PASSWORD = "e2e-pod-pull-s3cret"
SECRET = "regcred"


@pytest.fixture(scope="module")
def registry() -> Iterator[oci_registry.Registry]:
    with oci_registry.running_registry(secured=True, users={"alice": PASSWORD}) as running:
        yield running


@pytest.fixture
def core(kube: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


@pytest.fixture
def webhook(start_webhook: Any, registry: oci_registry.Registry) -> Any:
    return start_webhook(
        extra_args=[
            *("--pod-pull-secrets", "true", "--registry-ca-file", str(registry.ca_file)),
            # A pod's Secrets get half the deadline; on a loaded machine the first read
            # of one (a new thread, a new connection to the apiserver) took over 2.5 s.
            # The apiserver's 10 s timeout still bounds the answer.
            *("--resolve-deadline", "9s"),
        ]
    )


def policy_over(registry: oci_registry.Registry, *namespaces: str) -> dict[str, Any]:
    return {
        "images": [f"{registry.host}/**"],
        "namespaceSelector": {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "In",
                    "values": list(namespaces),
                }
            ]
        },
        "onResolveError": "Deny",
    }


def create_pod(core: client.CoreV1Api, namespace: str, image: str, *secrets: str) -> cluster.Answer:
    body = cluster.pod(f"p-{uuid.uuid4().hex[:6]}", image)
    if secrets:
        body["spec"]["imagePullSecrets"] = [{"name": name} for name in secrets]
    return cluster.call(core.create_namespaced_pod, namespace, body)


def add_secret(core: client.CoreV1Api, namespace: str, registry: oci_registry.Registry) -> None:
    secret = cluster.docker_registry_secret(SECRET, registry.host, "alice", PASSWORD)
    made = cluster.call(core.create_namespaced_secret, namespace, secret)
    assert made.status == 201, made.body


def test_a_namespace_with_the_secret_is_pinned_and_one_without_it_is_denied_right_after(
    webhook: Any,
    core: client.CoreV1Api,
    make_namespace: Any,
    make_policy: Any,
    registry: oci_registry.Registry,
) -> None:
    team_a, team_b = make_namespace(webhook), make_namespace(webhook)
    make_policy(policy_over(registry, team_a, team_b))
    add_secret(core, team_a, registry)
    digest = registry.push_image("private/shared", "v1", seed=team_a)
    image = registry.image("private/shared", "v1")

    pinned = create_pod(core, team_a, image, SECRET)
    assert pinned.status == 201, pinned.message
    assert cluster.images_of(pinned.body)["c0"] == registry.image("private/shared", "v1", digest)

    # Right after, the same image in B, naming A's Secret (B has none of that name).
    borrowed = create_pod(core, team_b, image, SECRET)
    assert borrowed.status == 403, borrowed.body
    assert registry.host in borrowed.message
    assert f"pull Secrets tried for {registry.host} in namespace {team_b}" in borrowed.message
    assert f"{SECRET} (does not exist)" in borrowed.message
    assert PASSWORD not in borrowed.message

    unnamed = create_pod(core, team_b, image)
    assert unnamed.status == 403, unnamed.body
    assert registry.host in unnamed.message
    assert f"nor its ServiceAccount names pull Secrets in namespace {team_b}" in unnamed.message

    # A is still pinned (from the cache of its own scope).
    again = create_pod(core, team_a, image, SECRET)
    assert again.status == 201, again.message
    assert PASSWORD not in webhook.process.log_path.read_text()


def test_a_secret_of_another_registry_is_named_as_tried_for_this_one(
    webhook: Any,
    core: client.CoreV1Api,
    make_namespace: Any,
    make_policy: Any,
    registry: oci_registry.Registry,
) -> None:
    team = make_namespace(webhook)
    make_policy(policy_over(registry, team))
    other = cluster.docker_registry_secret("ghcr-creds", "ghcr.io", "bob", PASSWORD)
    assert cluster.call(core.create_namespaced_secret, team, other).status == 201
    registry.push_image("private/other", "v1", seed=team)

    denied = create_pod(core, team, registry.image("private/other", "v1"), "ghcr-creds")
    assert denied.status == 403, denied.body
    assert "ghcr-creds (credentials for ghcr.io)" in denied.message


def test_the_service_accounts_pull_secrets_are_used_when_the_pod_names_none(
    webhook: Any,
    core: client.CoreV1Api,
    make_namespace: Any,
    make_policy: Any,
    registry: oci_registry.Registry,
) -> None:
    team = make_namespace(webhook)
    make_policy(policy_over(registry, team))
    add_secret(core, team, registry)
    account = {"metadata": {"name": "builder"}, "imagePullSecrets": [{"name": SECRET}]}
    assert cluster.call(core.create_namespaced_service_account, team, account).status == 201
    digest = registry.push_image("private/by-account", "v1", seed=team)

    body = cluster.pod(f"p-{uuid.uuid4().hex[:6]}", registry.image("private/by-account", "v1"))
    body["spec"]["serviceAccountName"] = "builder"
    pinned = cluster.call(core.create_namespaced_pod, team, body)
    assert pinned.status == 201, pinned.message
    assert cluster.images_of(pinned.body)["c0"] == registry.image(
        "private/by-account", "v1", digest
    )


def test_a_digest_cached_under_a_secret_is_not_served_once_the_secret_changes(
    webhook: Any,
    core: client.CoreV1Api,
    make_namespace: Any,
    make_policy: Any,
    registry: oci_registry.Registry,
) -> None:
    team = make_namespace(webhook)
    make_policy(policy_over(registry, team))
    add_secret(core, team, registry)
    registry.push_image("private/revoked", "v1", seed=team)
    image = registry.image("private/revoked", "v1")
    assert create_pod(core, team, image, SECRET).status == 201

    # A wrong password now: a new resourceVersion, a new scope. The digest resolved with
    # the old one (cached for the webhook's 60s TTL) is not served under it.
    wrong = cluster.docker_registry_secret(SECRET, registry.host, "alice", "not-the-password")
    assert cluster.call(core.replace_namespaced_secret, SECRET, team, wrong).status == 200

    def denied() -> cluster.Answer | None:
        answer = create_pod(core, team, image, SECRET)
        return answer if answer.status == 403 else None

    refused = cluster.eventually("a denial with the changed Secret", denied, 40)
    assert f"refused the credentials of the pull Secret {team}/{SECRET}" in refused.message
    assert "not-the-password" not in refused.message
