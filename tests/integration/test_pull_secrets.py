"""The webhook's registry credentials: dockerconfigjson Secrets read from the real apiserver
(`serving.pullsecrets`) and handed to the OCI client, which sends them to the token
endpoint of a real CNCF distribution registry whose token server checks its users.

Private repositories (`private/…`) get an anonymous client a token granting nothing, as
a private repository on Docker Hub, GHCR or Harbor does."""

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.support import cluster, oci_registry
from tests.support.controlplane import ControlPlane
from webhook import logs
from webhook.core import outcomes
from webhook.registries.oci import client as oci
from webhook.registries.oci import dockerconfig
from webhook.serving import pullsecrets

PASSWORD = "pull-s3cret-one"
ROTATED = "pull-s3cret-two"


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
def oci_client(registry: oci_registry.Registry) -> Iterator[oci.OciClient]:
    made = oci.OciClient(ca_file=str(registry.ca_file))
    yield made
    made.close()


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane) -> Iterator[Any]:
    with control_plane.new_api_client() as api_client:
        yield api_client


@pytest.fixture
def namespace(api: Any) -> Iterator[str]:
    name = cluster.unique("secrets")
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    yield name
    cluster.delete_namespace(api, name)


def lookup(
    oci_client: oci.OciClient, registry: oci_registry.Registry, repository: str, tag: str
) -> outcomes.Outcome:
    query = outcomes.Query(outcomes.Repository(registry.host, repository), tag=tag)
    return oci_client.lookup(query.repository, [query], timeout=10.0)[query]


def credential(password: str, source: str = "the pull Secret test/regcred") -> Any:
    return dockerconfig.Credential("alice", password, source)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record as the webhook writes it: one JSON line with its fields."""
    formatter = logs.JsonFormatter()
    return "\n".join(formatter.format(record) for record in caplog.records)


# --------------------------------------------------------------------------
# The OCI client, its credentials replaced while it runs
# --------------------------------------------------------------------------


def test_a_private_image_is_found_once_credentials_are_given_and_not_after_they_are_taken_back(
    registry: oci_registry.Registry, oci_client: oci.OciClient
) -> None:
    digest = registry.push_image("private/app", "1", seed="given")
    anonymous = lookup(oci_client, registry, "private/app", "1")
    assert isinstance(anonymous, outcomes.Unknown)
    assert f"digestguard has none for {registry.host}" in anonymous.message

    assert oci_client.use_credentials({registry.host: credential(PASSWORD)}) == {registry.host}
    found = lookup(oci_client, registry, "private/app", "1")
    assert isinstance(found, outcomes.Found)
    assert found.digest == digest

    # The token the credentials got is forgotten with them.
    assert oci_client.use_credentials({}) == {registry.host}
    assert isinstance(lookup(oci_client, registry, "private/app", "1"), outcomes.Unknown)


def test_a_public_repository_stays_readable_anonymously(
    registry: oci_registry.Registry, oci_client: oci.OciClient
) -> None:
    digest = registry.push_image("public/app", "1", seed="public")
    found = lookup(oci_client, registry, "public/app", "1")
    assert isinstance(found, outcomes.Found)
    assert found.digest == digest
    assert registry.token_server is not None
    assert registry.token_server.authenticated[-1] == ""


def test_refused_credentials_name_their_secret_and_never_show_the_password(
    registry: oci_registry.Registry, oci_client: oci.OciClient, users: dict[str, str]
) -> None:
    registry.push_image("private/rotated", "1", seed="rotated")
    oci_client.use_credentials({registry.host: credential(PASSWORD)})
    assert isinstance(lookup(oci_client, registry, "private/rotated", "1"), outcomes.Found)

    users["alice"] = ROTATED
    oci_client.use_credentials({registry.host: credential("a-wrong-one")})
    refused = lookup(oci_client, registry, "private/rotated", "1")
    assert isinstance(refused, outcomes.Unknown)
    assert "refused the credentials of the pull Secret test/regcred" in refused.message
    assert registry.host in refused.message
    assert "a-wrong-one" not in refused.message
    assert ROTATED not in refused.message

    oci_client.use_credentials({registry.host: credential(ROTATED)})
    assert isinstance(lookup(oci_client, registry, "private/rotated", "1"), outcomes.Found)


def test_giving_the_same_credentials_again_changes_nothing(
    registry: oci_registry.Registry, oci_client: oci.OciClient
) -> None:
    assert oci_client.use_credentials({registry.host: credential(PASSWORD)}) == {registry.host}
    assert oci_client.use_credentials({registry.host: credential(PASSWORD)}) == frozenset()


# --------------------------------------------------------------------------
# The pull Secrets, read from the apiserver and followed
# --------------------------------------------------------------------------


def follower(
    api: Any, namespace: str, oci_client: oci.OciClient, *names: str
) -> pullsecrets.PullSecrets:
    return pullsecrets.PullSecrets(
        namespace=namespace, names=names, use=oci_client.use_credentials, api_client=api
    )


def test_the_secrets_credentials_reach_the_client_and_a_rotation_is_followed(
    api: Any,
    namespace: str,
    registry: oci_registry.Registry,
    oci_client: oci.OciClient,
    users: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    core = client.CoreV1Api(api)
    secret = cluster.docker_registry_secret("regcred", registry.host, "alice", PASSWORD)
    core.create_namespaced_secret(namespace, secret)
    registry.push_image("private/followed", "1", seed="followed")
    secrets = follower(api, namespace, oci_client, "regcred")

    secrets.refresh()
    assert secrets.registries == {registry.host}
    assert isinstance(lookup(oci_client, registry, "private/followed", "1"), outcomes.Found)

    users["alice"] = ROTATED
    rotated = cluster.docker_registry_secret("regcred", registry.host, "alice", ROTATED)
    core.replace_namespaced_secret("regcred", namespace, rotated)
    secrets.refresh()
    assert isinstance(lookup(oci_client, registry, "private/followed", "1"), outcomes.Found)

    text = logged(caplog)
    assert f'"secret": "{namespace}/regcred"' in text
    assert "registry pull secret loaded" in text
    for shown in (PASSWORD, ROTATED, secret["data"][".dockerconfigjson"]):
        assert shown not in text


def test_a_missing_secret_is_logged_by_name_and_the_others_still_count(
    api: Any,
    namespace: str,
    registry: oci_registry.Registry,
    oci_client: oci.OciClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    core = client.CoreV1Api(api)
    secret = cluster.docker_registry_secret("present", registry.host, "alice", PASSWORD)
    core.create_namespaced_secret(namespace, secret)
    secrets = follower(api, namespace, oci_client, "absent", "present")

    secrets.refresh()
    assert secrets.registries == {registry.host}
    text = logged(caplog)
    assert f'"secret": "{namespace}/absent"' in text
    assert "the Secret does not exist" in text


def test_a_malformed_or_deleted_secret_leaves_its_registry_anonymous(
    api: Any,
    namespace: str,
    registry: oci_registry.Registry,
    oci_client: oci.OciClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    core = client.CoreV1Api(api)
    secret = cluster.docker_registry_secret("regcred", registry.host, "alice", PASSWORD)
    core.create_namespaced_secret(namespace, secret)
    registry.push_image("private/malformed", "1", seed="malformed")
    secrets = follower(api, namespace, oci_client, "regcred")
    secrets.refresh()
    assert isinstance(lookup(oci_client, registry, "private/malformed", "1"), outcomes.Found)

    # JSON (the apiserver checks that much), but `auth` is the password, not base64.
    broken = {
        "metadata": {"name": "regcred"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {
            ".dockerconfigjson": f'{{"auths": {{"{registry.host}": {{"auth": "{PASSWORD}"}}}}}}'
        },
    }
    core.replace_namespaced_secret("regcred", namespace, broken)
    secrets.refresh()
    assert secrets.registries == frozenset()
    assert isinstance(lookup(oci_client, registry, "private/malformed", "1"), outcomes.Unknown)
    text = logged(caplog)
    assert "registry pull secret not used" in text
    assert f"auths['{registry.host}'].auth is not base64 of user:password" in text
    assert PASSWORD not in text

    core.replace_namespaced_secret("regcred", namespace, secret)
    secrets.refresh()
    assert secrets.registries == {registry.host}
    core.delete_namespaced_secret("regcred", namespace)
    secrets.refresh()
    assert secrets.registries == frozenset()
    assert "the Secret does not exist" in logged(caplog)


def test_a_secret_of_another_type_is_refused_by_its_type(
    api: Any, namespace: str, oci_client: oci.OciClient, caplog: pytest.LogCaptureFixture
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "opaque"}, "stringData": {"password": PASSWORD}}
    )
    secrets = follower(api, namespace, oci_client, "opaque")
    secrets.refresh()
    assert secrets.registries == frozenset()
    text = logged(caplog)
    assert "is of type 'Opaque', not kubernetes.io/dockerconfigjson" in text
    assert PASSWORD not in text


# --------------------------------------------------------------------------
# A pod namespace's credentials: asked with under their scope, and only there
# --------------------------------------------------------------------------


def scoped_lookup(
    oci_client: oci.OciClient, registry: oci_registry.Registry, repository: str, scope: str
) -> outcomes.Outcome:
    query = outcomes.Query(outcomes.Repository(registry.host, repository), tag="1", scope=scope)
    return oci_client.lookup(query.repository, [query], timeout=10.0)[query]


def test_a_token_got_with_a_namespaces_secret_is_sent_for_that_scope_only(
    registry: oci_registry.Registry, oci_client: oci.OciClient
) -> None:
    digest = registry.push_image("private/scoped", "1", seed="scoped")
    team_a = "team-a/regcred@7"
    oci_client.use_scoped(team_a, registry.host, credential(PASSWORD, "the pull Secret team-a/x"))

    found = scoped_lookup(oci_client, registry, "private/scoped", team_a)
    assert isinstance(found, outcomes.Found)
    assert found.digest == digest
    assert registry.token_server is not None
    assert registry.token_server.authenticated[-1] == "alice"
    seen = len(registry.token_server.authenticated)
    # Right after: anonymous, and another namespace's scope, get nothing of team-a's.
    assert isinstance(scoped_lookup(oci_client, registry, "private/scoped", ""), outcomes.Unknown)
    other = scoped_lookup(oci_client, registry, "private/scoped", "team-b/regcred@9")
    assert isinstance(other, outcomes.Unknown)
    assert "refused the anonymous token" in other.message
    asked_since = registry.token_server.authenticated[seen:]
    assert asked_since
    assert set(asked_since) == {""}, "only anonymous token requests"


def test_refused_scoped_credentials_name_their_secret(
    registry: oci_registry.Registry, oci_client: oci.OciClient
) -> None:
    registry.push_image("private/scoped-wrong", "1", seed="scoped-wrong")
    scope = "team-c/regcred@3"
    oci_client.use_scoped(
        scope, registry.host, credential("nope", "the pull Secret team-c/regcred")
    )
    refused = scoped_lookup(oci_client, registry, "private/scoped-wrong", scope)
    assert isinstance(refused, outcomes.Unknown)
    assert "refused the credentials of the pull Secret team-c/regcred" in refused.message
    assert "nope" not in refused.message
