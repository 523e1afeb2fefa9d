"""Registry credentials configured for the webhook: a dockerconfigjson Secret in its own
namespace (`--registry-pull-secrets`) opens a private repository of a real CNCF
distribution registry, whose token server checks Basic credentials and gives an
anonymous client nothing on `private/…`; pods go through the real apiserver.

The credentials never show: not in the webhook's log, not in a denial.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.support import cluster, oci_registry

pytestmark = pytest.mark.e2e

PASSWORD = "e2e-pull-s3cret"
ROTATED = "e2e-pull-s3cret-rotated"
SECRET = "regcred"


@pytest.fixture(scope="module")
def registry() -> Iterator[oci_registry.Registry]:
    with oci_registry.running_registry(secured=True, users={"alice": PASSWORD}) as running:
        yield running


@pytest.fixture
def users(registry: oci_registry.Registry) -> Iterator[dict[str, str]]:
    """The token server's users, restored after a test that rotates a password."""
    assert registry.token_server is not None
    yield registry.token_server.users
    registry.token_server.users.clear()
    registry.token_server.users["alice"] = PASSWORD


@pytest.fixture
def core(kube: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


def webhook_arguments(registry: oci_registry.Registry, *more: str) -> list[str]:
    return [
        *("--registry-ca-file", str(registry.ca_file)),
        *("--registry-pull-secrets", SECRET),
        *("--registry-pull-secrets-interval", "1s"),
        *more,
    ]


def private_policy(registry: oci_registry.Registry, namespace: str) -> dict[str, Any]:
    return {
        "images": [f"{registry.host}/**"],
        "namespaceSelector": cluster.only_in(namespace),
        "onResolveError": "Deny",
    }


def create_pod(core: client.CoreV1Api, namespace: str, image: str) -> cluster.Answer:
    name = f"p-{uuid.uuid4().hex[:6]}"
    return cluster.call(core.create_namespaced_pod, namespace, cluster.pod(name, image))


def never_shown(text: str) -> None:
    for password in (PASSWORD, ROTATED):
        assert password not in text
        assert base64.b64encode(f"alice:{password}".encode()).decode() not in text


def test_a_private_image_is_pinned_with_the_webhooks_pull_secret_and_denied_without_it(
    start_webhook: Any,
    core: client.CoreV1Api,
    make_namespace: Any,
    make_policy: Any,
    registry: oci_registry.Registry,
) -> None:
    own_namespace = make_namespace(None)
    secret = cluster.docker_registry_secret(SECRET, registry.host, "alice", PASSWORD)
    made = cluster.call(core.create_namespaced_secret, own_namespace, secret)
    assert made.status == 201, made.body
    webhook = start_webhook(namespace=own_namespace, extra_args=webhook_arguments(registry))
    namespace = make_namespace(webhook)
    make_policy(private_policy(registry, namespace))
    digest = registry.push_image("private/app", "v1", seed=namespace)

    pinned = create_pod(core, namespace, registry.image("private/app", "v1"))
    assert pinned.status == 201, pinned.message
    assert cluster.images_of(pinned.body)["c0"] == registry.image("private/app", "v1", digest)

    # The Secret deleted: within the interval its registry is read anonymously again.
    # (Digests resolved before stay cached: they are facts about the registry.)
    cluster.call(core.delete_namespaced_secret, SECRET, own_namespace)
    cluster.eventually(
        "the webhook to see the Secret gone",
        lambda: "the Secret does not exist" in webhook.process.log_path.read_text(),
        30,
    )
    registry.push_image("private/app", "v2", seed=f"{namespace}-v2")
    refused = create_pod(core, namespace, registry.image("private/app", "v2"))
    assert refused.status == 403, refused.body
    assert registry.host in refused.message
    assert f"digestguard has none for {registry.host}" in refused.message
    never_shown(refused.message)
    assert webhook.process.ready(), "a missing pull Secret does not make the webhook unready"
    log = webhook.process.log_path.read_text()
    assert f'"secret": "{own_namespace}/{SECRET}"' in log
    never_shown(log)
    never_shown(webhook.process.metrics())


def test_a_rotated_password_is_used_without_a_restart(
    start_webhook: Any,
    core: client.CoreV1Api,
    make_namespace: Any,
    make_policy: Any,
    registry: oci_registry.Registry,
    users: dict[str, str],
) -> None:
    own_namespace = make_namespace(None)
    secret = cluster.docker_registry_secret(SECRET, registry.host, "alice", PASSWORD)
    assert cluster.call(core.create_namespaced_secret, own_namespace, secret).status == 201
    webhook = start_webhook(namespace=own_namespace, extra_args=webhook_arguments(registry))
    namespace = make_namespace(webhook)
    make_policy(private_policy(registry, namespace))
    first = registry.push_image("private/rotating", "v1", seed=namespace)
    pinned = create_pod(core, namespace, registry.image("private/rotating", "v1"))
    assert cluster.images_of(pinned.body)["c0"] == registry.image("private/rotating", "v1", first)

    # The registry's password changes first: the Secret's is refused, by its name. (A
    # repository not asked before: a token already given stays good until it expires.)
    users["alice"] = ROTATED
    registry.push_image("private/rotated", "v1", seed=f"{namespace}-rotated")
    refused = create_pod(core, namespace, registry.image("private/rotated", "v1"))
    assert refused.status == 403, refused.body
    assert f"refused the credentials of the pull Secret {own_namespace}/{SECRET}" in (
        refused.message
    )
    never_shown(refused.message)

    rotated = cluster.docker_registry_secret(SECRET, registry.host, "alice", ROTATED)
    replaced = cluster.call(core.replace_namespaced_secret, SECRET, own_namespace, rotated)
    assert replaced.status == 200, replaced.body
    second = registry.push_image("private/rotated", "v2", seed=f"{namespace}-v2")

    def admitted() -> cluster.Answer | None:
        answer = create_pod(core, namespace, registry.image("private/rotated", "v2"))
        return answer if answer.status == 201 else None

    after = cluster.eventually("a pod pinned with the rotated password", admitted, 30)
    assert cluster.images_of(after.body)["c0"] == registry.image("private/rotated", "v2", second)
    process = webhook.process.process
    assert process is not None
    assert process.poll() is None, "the process that started is the one that pinned it"
    never_shown(webhook.process.log_path.read_text())
