"""What a dockerconfigjson Secret gives the webhook, and how several Secrets merge."""

import base64
import json
from typing import Any

import pytest

from webhook import errors
from webhook.registries.oci import dockerconfig
from webhook.serving import podsecrets, pullsecrets


def secret(config: Any, kind: str = pullsecrets.SECRET_TYPE) -> dict[str, Any]:
    encoded = base64.b64encode(json.dumps(config).encode()).decode()
    return {"type": kind, "data": {pullsecrets.DATA_KEY: encoded}}


def test_each_credential_is_named_by_the_secret_it_came_from() -> None:
    body = secret({"auths": {"ghcr.io": {"username": "alice", "password": "pw"}}})
    assert pullsecrets.credentials_of(body, "guard", "regcred") == {
        "ghcr.io": dockerconfig.Credential("alice", "pw", "the pull Secret guard/regcred")
    }


def test_docker_hub_keys_fold_into_docker_io() -> None:
    auth = base64.b64encode(b"bob:pw").decode()
    body = secret({"auths": {"https://index.docker.io/v1/": {"auth": auth}}})
    assert set(pullsecrets.credentials_of(body, "guard", "hub")) == {"docker.io"}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"type": "Opaque", "data": {}}, "is of type 'Opaque', not kubernetes.io/dockerconfigjson"),
        ({"type": pullsecrets.SECRET_TYPE, "data": {}}, "has no .dockerconfigjson"),
        (
            {"type": pullsecrets.SECRET_TYPE, "data": {".dockerconfigjson": "%%%"}},
            ".dockerconfigjson is not base64 of UTF-8",
        ),
        (secret({"auths": []}), "'auths' is not an object"),
    ],
)
def test_a_secret_that_gives_nothing_usable_says_why_by_its_name(
    body: dict[str, Any], problem: str
) -> None:
    with pytest.raises(errors.ConfigurationError) as raised:
        pullsecrets.credentials_of(body, "guard", "regcred")
    assert "Secret guard/regcred" in str(raised.value)
    assert problem in str(raised.value)


def test_a_password_that_is_not_base64_is_not_quoted_in_the_error() -> None:
    body = secret({"auths": {"ghcr.io": {"auth": "hunter2-not-base64!"}}})
    with pytest.raises(errors.ConfigurationError) as raised:
        pullsecrets.credentials_of(body, "guard", "regcred")
    assert "hunter2" not in str(raised.value)


def test_the_first_secret_listed_wins_for_a_registry_both_name() -> None:
    first = {"ghcr.io": dockerconfig.Credential("a", "1", "first")}
    second = {
        "ghcr.io": dockerconfig.Credential("b", "2", "second"),
        "quay.io": dockerconfig.Credential("c", "3", "second"),
    }
    assert pullsecrets.merged([first, second]) == {
        "ghcr.io": first["ghcr.io"],
        "quay.io": second["quay.io"],
    }


# A pod's own pull Secrets: what a denial says was tried


def pod_credentials(*tried: tuple[str, str], used: str = "") -> podsecrets.PodCredentials:
    by_registry = {}
    if used:
        credential = dockerconfig.Credential("a", "pw", f"the pull Secret team/{used}")
        by_registry["ghcr.io"] = podsecrets.Scoped(f"team/{used}@5", credential)
    return podsecrets.PodCredentials("team", by_registry, tried)


def test_a_denial_names_every_secret_tried_and_what_each_gave() -> None:
    credentials = pod_credentials(("gone", "does not exist"), ("quay", "credentials for quay.io"))
    assert credentials.tried_for("ghcr.io") == (
        "pull Secrets tried for ghcr.io in namespace team: gone (does not exist),"
        " quay (credentials for quay.io)"
    )
    assert credentials.scope_of("ghcr.io") == ""


def test_the_secret_used_for_a_registry_is_named_as_used() -> None:
    credentials = pod_credentials(("ghcr", "credentials for ghcr.io"), used="ghcr")
    assert credentials.scope_of("ghcr.io") == "team/ghcr@5"
    assert "ghcr (used)" in credentials.tried_for("ghcr.io")


def test_a_pod_without_pull_secrets_is_said_to_name_none() -> None:
    assert "neither the pod nor its ServiceAccount names pull Secrets in namespace team" in (
        pod_credentials().tried_for("ghcr.io")
    )
