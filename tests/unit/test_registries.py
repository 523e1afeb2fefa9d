"""The router: ECR private registries to the ECR client, every other registry to OCI."""

from collections.abc import Collection, Mapping

import pytest

from webhook import references, registries, resolutions

DIGEST = references.Digest("sha256:" + "a" * 64)


class Recording:
    """A registry client that answers Found and remembers the registries it was asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def lookup(
        self,
        repository: resolutions.Repository,
        queries: Collection[resolutions.Query],
        *,
        timeout: float,
    ) -> Mapping[resolutions.Query, resolutions.Outcome]:
        self.asked.append(repository.registry)
        return {q: resolutions.Found(DIGEST, resolutions.OCI_INDEX) for q in queries}

    def mutability(
        self, repository: resolutions.Repository, *, timeout: float
    ) -> resolutions.MutabilityOutcome:
        self.asked.append(repository.registry)
        return resolutions.TagMutability(resolutions.Mutability.IMMUTABLE)


def ask(registry: str) -> tuple[list[str], list[str]]:
    ecr, oci = Recording(), Recording()
    router = registries.RoutingClient(ecr, oci)
    repository = resolutions.Repository(registry, "team/app")
    router.lookup(repository, [resolutions.Query(repository, tag="v1")], timeout=1.0)
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
    router = registries.RoutingClient(Recording(), Recording())
    repository = resolutions.Repository("ghcr.io", "team/app")
    query = resolutions.Query(repository, tag="v1")
    assert router.lookup(repository, [query], timeout=1.0) == {
        query: resolutions.Found(DIGEST, resolutions.OCI_INDEX)
    }
