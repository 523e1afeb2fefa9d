"""The pure parts of the OCI client: WWW-Authenticate challenges, hosts and settings."""

import pytest

from webhook import errors
from webhook.core import outcomes
from webhook.registries.oci import auth
from webhook.registries.oci import client as oci


def test_a_docker_hub_bearer_challenge_is_parsed() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull"'
    )
    (challenge,) = auth.parse_challenges(header)
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.docker.io/token"
    assert challenge.service == "registry.docker.io"
    assert challenge.scope == "repository:library/nginx:pull"


def test_a_scope_with_several_actions_keeps_its_comma() -> None:
    (challenge,) = auth.parse_challenges(
        'Bearer realm="https://r/t",scope="repository:a:pull,push"'
    )
    assert challenge.scope == "repository:a:pull,push"


def test_scheme_and_parameter_names_are_case_insensitive() -> None:
    (challenge,) = auth.parse_challenges('BEARER Realm="https://r/t", SERVICE=reg')
    assert (challenge.scheme, challenge.realm, challenge.service) == (
        "bearer",
        "https://r/t",
        "reg",
    )


def test_unquoted_values_and_spaces_around_separators_are_accepted() -> None:
    (challenge,) = auth.parse_challenges('Bearer realm = "https://r/t" , service=reg.example')
    assert (challenge.realm, challenge.service) == ("https://r/t", "reg.example")


def test_escaped_characters_in_quoted_values_are_unescaped() -> None:
    (challenge,) = auth.parse_challenges(r'Bearer realm="https://r/t",error="say \"no\""')
    assert challenge.params["error"] == 'say "no"'


def test_several_challenges_in_one_header_are_told_apart() -> None:
    challenges = auth.parse_challenges(
        'Basic realm="Registry", Bearer realm="https://r/t",service="reg"'
    )
    assert [(c.scheme, c.realm) for c in challenges] == [
        ("basic", "Registry"),
        ("bearer", "https://r/t"),
    ]


def test_a_token68_challenge_is_skipped_over() -> None:
    challenges = auth.parse_challenges('Negotiate abc123==, Bearer realm="https://r/t"')
    assert [(c.scheme, dict(c.params)) for c in challenges] == [
        ("negotiate", {}),
        ("bearer", {"realm": "https://r/t"}),
    ]


@pytest.mark.parametrize("header", ["", "  ", ",", '="x"'])
def test_an_empty_or_broken_header_has_no_challenges(header: str) -> None:
    assert auth.parse_challenges(header) == ()


def test_a_bearer_challenge_without_parameters_has_no_realm() -> None:
    (challenge,) = auth.parse_challenges("Bearer")
    assert challenge.realm is None


def test_docker_hub_is_served_at_registry_1() -> None:
    assert oci.api_host("docker.io") == "registry-1.docker.io"
    assert oci.api_host("ghcr.io") == "ghcr.io"
    assert oci.api_host("localhost:5000") == "localhost:5000"


def test_the_pull_scope_names_the_repository() -> None:
    repository = outcomes.Repository("docker.io", "library/nginx")
    assert auth.pull_scope(repository) == "repository:library/nginx:pull"


def test_tag_mutability_is_unknown_outside_ecr() -> None:
    client = oci.OciClient()
    outcome = client.mutability(outcomes.Repository("ghcr.io", "team/app"), timeout=1.0)
    assert outcome == outcomes.Unknown(
        "tag mutability is an Amazon ECR setting; ghcr.io is a generic OCI registry"
    )


@pytest.mark.parametrize("entry", ["http://localhost:5000", "localhost:5000/v2", "", "u@host"])
def test_an_insecure_registry_must_be_a_host_and_port(entry: str) -> None:
    with pytest.raises(errors.ConfigurationError, match="host\\[:port\\]"):
        oci.OciClient(insecure_registries=[entry])


def test_a_registry_ca_file_that_cannot_be_loaded_is_a_configuration_error() -> None:
    with pytest.raises(errors.ConfigurationError, match="registry CA file"):
        oci.OciClient(ca_file="/nonexistent/ca.pem")


def test_no_call_is_made_without_time_left() -> None:
    client = oci.OciClient()
    repository = outcomes.Repository("127.0.0.1:9", "app")
    with pytest.raises(errors.DeadlineExceeded):
        client.lookup(repository, [outcomes.Query(repository, tag="v1")], timeout=0.0)
