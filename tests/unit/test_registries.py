"""The router: ECR private registries to the ECR client, every other registry to OCI."""

from collections.abc import Collection, Mapping

import pytest

from webhook.core import outcomes, references
from webhook.registries import protocol, routing

DIGEST = references.Digest("sha256:" + "a" * 64)


class Recording:
    """A registry client that answers Found and remembers the registries it was asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def lookup(
        self,
        repository: outcomes.Repository,
        queries: Collection[outcomes.Query],
        *,
        timeout: float,
    ) -> Mapping[outcomes.Query, outcomes.Outcome]:
        self.asked.append(repository.registry)
        return {q: outcomes.Found(DIGEST, protocol.OCI_INDEX) for q in queries}

    def mutability(
        self, repository: outcomes.Repository, *, timeout: float
    ) -> outcomes.MutabilityOutcome:
        self.asked.append(repository.registry)
        return outcomes.TagMutability(outcomes.Mutability.IMMUTABLE)


def ask(registry: str) -> tuple[list[str], list[str]]:
    ecr, oci = Recording(), Recording()
    router = routing.RoutingClient(ecr, oci)
    repository = outcomes.Repository(registry, "team/app")
    router.lookup(repository, [outcomes.Query(repository, tag="v1")], timeout=1.0)
    router.mutability(repository, timeout=1.0)
    return ecr.asked, oci.asked


@pytest.mark.parametrize(
    "registry",
    [
        "111122223333.dkr.ecr.eu-west-1.amazonaws.com",
        "111122223333.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
        "111122223333.dkr-ecr.eu-west-1.on.aws",
        "111122223333.dkr.ecr.cn-north-1.amazonaws.com.cn",
    ],
)
def test_ecr_private_registries_go_to_the_ecr_client(registry: str) -> None:
    assert ask(registry) == ([registry, registry], [])


@pytest.mark.parametrize(
    "registry",
    [
        pytest.param("public.ecr.aws", id="ecr-public"),
        pytest.param("docker.io", id="docker-hub"),
        pytest.param("ghcr.io", id="ghcr"),
        pytest.param("localhost:5000", id="local"),
        pytest.param("111122223333.dkr.ecr.eu-west-1.amazonaws.com.evil.io", id="look-alike"),
    ],
)
def test_every_other_registry_goes_to_the_oci_client(registry: str) -> None:
    assert ask(registry) == ([], [registry, registry])


def test_the_answer_is_the_chosen_clients() -> None:
    router = routing.RoutingClient(Recording(), Recording())
    repository = outcomes.Repository("ghcr.io", "team/app")
    query = outcomes.Query(repository, tag="v1")
    assert router.lookup(repository, [query], timeout=1.0) == {
        query: outcomes.Found(DIGEST, protocol.OCI_INDEX)
    }
