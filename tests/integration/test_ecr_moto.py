"""The ECR client over real HTTP against a moto server: each ECR answer becomes its outcome."""

import time
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.support import ecr_emulator
from webhook.core import outcomes, references
from webhook.registries import ecr, resolver

if TYPE_CHECKING:
    from types_boto3_ecr.client import ECRClient

TIMEOUT = 10.0


@pytest.fixture
def seeder(moto_server: ecr_emulator.MotoServer) -> "ECRClient":
    return ecr_emulator.ecr_client(moto_server.url)


@pytest.fixture(scope="module")
def client(moto_server: ecr_emulator.MotoServer) -> ecr.EcrClient:
    return ecr.EcrClient(endpoint_url=moto_server.url, session=ecr_emulator.session())


@pytest.fixture
def repository() -> outcomes.Repository:
    """A repository of this test's own, so tests share the moto server safely."""
    return outcomes.Repository(ecr_emulator.registry_host(), f"team/app-{uuid.uuid4().hex[:8]}")


def by_tag(repository: outcomes.Repository, tag: str) -> outcomes.Query:
    return outcomes.Query(repository, tag=tag)


def by_digest(repository: outcomes.Repository, digest: str) -> outcomes.Query:
    return outcomes.Query(repository, digest=references.Digest(digest))


def test_a_single_arch_docker_manifest_resolves_to_the_sha256_of_its_bytes(
    client: ecr.EcrClient, seeder: "ECRClient", repository: outcomes.Repository
) -> None:
    manifest = ecr_emulator.docker_manifest()
    ecr_emulator.seed_image(seeder, repository.name, "v1", manifest, ecr_emulator.DOCKER_MANIFEST)

    results = client.lookup(repository, [by_tag(repository, "v1")], timeout=TIMEOUT)

    assert results == {
        by_tag(repository, "v1"): outcomes.Found(
            references.Digest(ecr_emulator.digest_of(manifest)), ecr_emulator.DOCKER_MANIFEST
        )
    }


def test_an_oci_index_resolves_to_the_digest_of_the_index(
    client: ecr.EcrClient, seeder: "ECRClient", repository: outcomes.Repository
) -> None:
    index, children = ecr_emulator.multi_arch(ecr_emulator.OCI_INDEX)
    for child in children.values():
        ecr_emulator.seed_image(seeder, repository.name, None, child, ecr_emulator.OCI_MANIFEST)
    ecr_emulator.seed_image(seeder, repository.name, "v1", index, ecr_emulator.OCI_INDEX)

    results = client.lookup(repository, [by_tag(repository, "v1")], timeout=TIMEOUT)

    assert results[by_tag(repository, "v1")] == outcomes.Found(
        references.Digest(ecr_emulator.digest_of(index)), ecr_emulator.OCI_INDEX
    )


def test_a_docker_manifest_list_resolves_to_the_digest_of_the_list(
    client: ecr.EcrClient, seeder: "ECRClient", repository: outcomes.Repository
) -> None:
    manifest_list, children = ecr_emulator.multi_arch(ecr_emulator.DOCKER_MANIFEST_LIST)
    for child in children.values():
        ecr_emulator.seed_image(seeder, repository.name, None, child, ecr_emulator.DOCKER_MANIFEST)
    ecr_emulator.seed_image(
        seeder, repository.name, "v1", manifest_list, ecr_emulator.DOCKER_MANIFEST_LIST
    )

    results = client.lookup(repository, [by_tag(repository, "v1")], timeout=TIMEOUT)

    assert results[by_tag(repository, "v1")] == outcomes.Found(
        references.Digest(ecr_emulator.digest_of(manifest_list)),
        ecr_emulator.DOCKER_MANIFEST_LIST,
    )


def test_a_missing_tag_is_reported_missing(
    client: ecr.EcrClient, seeder: "ECRClient", repository: outcomes.Repository
) -> None:
    manifest = ecr_emulator.docker_manifest()
    ecr_emulator.seed_image(seeder, repository.name, "v1", manifest, ecr_emulator.DOCKER_MANIFEST)

    results = client.lookup(repository, [by_tag(repository, "v2")], timeout=TIMEOUT)

    outcome = results[by_tag(repository, "v2")]
    assert isinstance(outcome, outcomes.Missing)
    assert outcome.code == "ImageNotFound"


def test_a_missing_repository_is_reported_missing_for_every_image(
    client: ecr.EcrClient, repository: outcomes.Repository
) -> None:
    queries = [by_tag(repository, "v1"), by_tag(repository, "v2")]

    results = client.lookup(repository, queries, timeout=TIMEOUT)

    assert {q: type(o) for q, o in results.items()} == dict.fromkeys(queries, outcomes.Missing)
    assert {o.code for o in results.values() if isinstance(o, outcomes.Missing)} == {
        ecr.REPOSITORY_NOT_FOUND
    }


def test_a_tag_and_its_digest_asked_together_resolve_to_the_same_digest(
    client: ecr.EcrClient, seeder: "ECRClient", repository: outcomes.Repository
) -> None:
    manifest = ecr_emulator.docker_manifest()
    digest = ecr_emulator.seed_image(
        seeder, repository.name, "v1", manifest, ecr_emulator.DOCKER_MANIFEST
    )
    queries = [by_tag(repository, "v1"), by_digest(repository, digest)]

    results = client.lookup(repository, queries, timeout=TIMEOUT)

    expected = outcomes.Found(references.Digest(digest), ecr_emulator.DOCKER_MANIFEST)
    assert results == dict.fromkeys(queries, expected)


def test_tags_of_different_images_each_get_their_own_digest(
    client: ecr.EcrClient, seeder: "ECRClient", repository: outcomes.Repository
) -> None:
    digests = {
        tag: ecr_emulator.seed_image(
            seeder,
            repository.name,
            tag,
            ecr_emulator.docker_manifest(seed=tag),
            ecr_emulator.DOCKER_MANIFEST,
        )
        for tag in ("v1", "v2", "v3")
    }

    results = client.lookup(
        repository, [by_tag(repository, tag) for tag in digests], timeout=TIMEOUT
    )

    assert {q.tag: o.digest for q, o in results.items() if isinstance(o, outcomes.Found)} == (
        digests
    )


def test_a_mutable_repository_is_reported_mutable(
    client: ecr.EcrClient, seeder: "ECRClient", repository: outcomes.Repository
) -> None:
    ecr_emulator.create_repository(seeder, repository.name, mutability="MUTABLE")

    assert client.mutability(repository, timeout=TIMEOUT) == outcomes.TagMutability(
        outcomes.Mutability.MUTABLE
    )


def test_an_immutable_repository_is_reported_immutable(
    client: ecr.EcrClient, seeder: "ECRClient", repository: outcomes.Repository
) -> None:
    ecr_emulator.create_repository(seeder, repository.name, mutability="IMMUTABLE")

    assert client.mutability(repository, timeout=TIMEOUT) == outcomes.TagMutability(
        outcomes.Mutability.IMMUTABLE
    )


def test_exclusion_filters_come_with_the_mutability_mode(
    client: ecr.EcrClient, seeder: "ECRClient", repository: outcomes.Repository
) -> None:
    ecr_emulator.create_repository(
        seeder,
        repository.name,
        mutability="IMMUTABLE_WITH_EXCLUSION",
        exclusions=["latest", "dev-*"],
    )

    assert client.mutability(repository, timeout=TIMEOUT) == outcomes.TagMutability(
        outcomes.Mutability.IMMUTABLE_WITH_EXCLUSION, ("latest", "dev-*")
    )


def test_the_mutability_of_a_missing_repository_is_unknown(
    client: ecr.EcrClient, repository: outcomes.Repository
) -> None:
    outcome = client.mutability(repository, timeout=TIMEOUT)

    assert isinstance(outcome, outcomes.Unknown)
    assert repository.name in outcome.message


async def test_the_resolver_pins_a_tag_through_the_ecr_client(
    client: ecr.EcrClient, seeder: "ECRClient", repository: outcomes.Repository
) -> None:
    index, _ = ecr_emulator.multi_arch(ecr_emulator.OCI_INDEX)
    ecr_emulator.seed_image(seeder, repository.name, "v1", index, ecr_emulator.OCI_INDEX)
    the_resolver = resolver.Resolver(client)
    try:
        results = await the_resolver.resolve(
            {by_tag(repository, "v1"): 0.0}, deadline=time.monotonic() + TIMEOUT
        )
    finally:
        await the_resolver.aclose()

    assert results == {
        by_tag(repository, "v1"): outcomes.Found(
            references.Digest(ecr_emulator.digest_of(index)), ecr_emulator.OCI_INDEX
        )
    }
