"""ECR pull-through cache repositories: boto3 over real HTTP to the ECR-protocol stub,
whose rule caches an upstream that is a real OCI registry over HTTP (the OCI stub).

ECR holds an upstream image only once a pull through the cache imported it, and a first
pull by digest fails, so an image ECR did not return is never pinned: the upstream says
whether the tag exists.
"""

from collections.abc import Iterator

import boto3
import pytest

from tests.support import ecr_emulator, ecr_stub, oci_stub, ports
from webhook import errors, metrics
from webhook.core import outcomes, references
from webhook.registries import ecr
from webhook.registries.oci import client as oci

BUDGET = 30.0
UPSTREAM_NAME = "library/nginx"
CACHED = outcomes.Repository(ecr_emulator.registry_host(), f"docker-hub/{UPSTREAM_NAME}")
PLAIN = outcomes.Repository(ecr_emulator.registry_host(), "team/app")
SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ecr-pullthroughcache/docker-hub"


@pytest.fixture
def upstream() -> Iterator[oci_stub.OciStub]:
    with oci_stub.OciStub() as running:
        yield running


@pytest.fixture
def stub(upstream: oci_stub.OciStub) -> Iterator[ecr_stub.EcrStub]:
    with ecr_stub.EcrStub() as running:
        running.configure(
            pull_through_rules=[
                {"ecrRepositoryPrefix": "quay", "upstreamRegistryUrl": "quay.io"},
                {"ecrRepositoryPrefix": "k8s", "upstreamRegistryUrl": "registry.k8s.io"},
                {
                    "ecrRepositoryPrefix": "docker-hub",
                    "upstreamRegistryUrl": upstream.host,
                    "credentialArn": SECRET,
                },
            ]
        )
        yield running


@pytest.fixture(scope="module")
def aws_session() -> boto3.session.Session:
    return ecr_emulator.session()


@pytest.fixture
def client(
    stub: ecr_stub.EcrStub, upstream: oci_stub.OciStub, aws_session: boto3.session.Session
) -> Iterator[ecr.EcrClient]:
    upstream_client = oci.OciClient(insecure_registries=[upstream.host])
    yield ecr.EcrClient(
        endpoint_url=stub.url,
        session=aws_session,
        connect_timeout=10.0,
        read_timeout=10.0,
        upstream=upstream_client,
    )
    upstream_client.close()


@pytest.fixture
def manifest() -> bytes:
    return ecr_emulator.docker_manifest(seed="nginx")


def tag(name: str = "1.25", repository: outcomes.Repository = CACHED) -> outcomes.Query:
    return outcomes.Query(repository, tag=name)


def lookup(client: ecr.EcrClient, query: outcomes.Query) -> outcomes.Outcome:
    return client.lookup(query.repository, [query], timeout=BUDGET)[query]


def upstream_has(upstream: oci_stub.OciStub, manifest: bytes, name: str = "1.25") -> None:
    upstream.manifests[(UPSTREAM_NAME, name)] = (manifest, ecr_emulator.DOCKER_MANIFEST)


def ecr_upstream_has(stub: ecr_stub.EcrStub, manifest: bytes, name: str = "1.25") -> None:
    stub.configure(
        upstream={CACHED.name: {name: [manifest.decode(), ecr_emulator.DOCKER_MANIFEST]}}
    )


# ECR returns the image: pinned


def test_a_tag_the_lookup_imports_through_the_cache_is_found(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, manifest: bytes
) -> None:
    ecr_upstream_has(stub, manifest)

    outcome = lookup(client, tag())

    assert outcome == outcomes.Found(
        references.Digest(ecr_emulator.digest_of(manifest)), ecr_emulator.DOCKER_MANIFEST
    )
    assert "1.25" in stub.config.images[CACHED.name]


def test_an_image_ecr_already_holds_is_found_without_reading_rules_or_the_upstream(
    client: ecr.EcrClient,
    stub: ecr_stub.EcrStub,
    upstream: oci_stub.OciStub,
    manifest: bytes,
) -> None:
    stub.add_image(CACHED.name, "1.25", manifest, ecr_emulator.DOCKER_MANIFEST)

    assert isinstance(lookup(client, tag()), outcomes.Found)
    assert stub.requests("DescribePullThroughCacheRules") == []
    assert upstream.received() == []


# ECR does not return it: never pinned, the upstream decides


def test_a_tag_ecr_may_not_import_but_the_upstream_has_is_not_imported_naming_the_rule(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, upstream: oci_stub.OciStub, manifest: bytes
) -> None:
    ecr_upstream_has(stub, manifest)
    upstream_has(upstream, manifest)
    stub.configure(import_refused="AccessDeniedException")

    outcome = lookup(client, tag())

    assert isinstance(outcome, outcomes.NotImported)
    assert f"pull-through cache rule docker-hub/ -> {upstream.host}" in outcome.message
    assert "ecr:BatchImportUpstreamImage" in outcome.message
    assert f"the upstream {upstream.host}/{UPSTREAM_NAME} has it" in outcome.message


def test_a_repository_the_first_pull_would_create_is_not_imported_naming_create_repository(
    client: ecr.EcrClient, upstream: oci_stub.OciStub, manifest: bytes
) -> None:
    upstream_has(upstream, manifest)

    outcome = lookup(client, tag())

    assert isinstance(outcome, outcomes.NotImported)
    assert "ecr:CreateRepository" in outcome.message


def test_a_tag_neither_ecr_nor_the_upstream_has_is_missing(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, upstream: oci_stub.OciStub
) -> None:
    stub.add_repository(CACHED.name)

    outcome = lookup(client, tag("no-such-tag"))

    assert isinstance(outcome, outcomes.Missing)
    assert "neither ECR nor the upstream has it" in outcome.message
    assert upstream.manifest_requests() == 1


def test_unable_to_get_upstream_image_is_not_retried_and_names_the_secrets_manager_secret(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, upstream: oci_stub.OciStub, manifest: bytes
) -> None:
    ecr_upstream_has(stub, manifest)
    upstream_has(upstream, manifest)
    stub.queue("UnableToGetUpstreamImageException")

    outcome = lookup(client, tag())

    assert isinstance(outcome, outcomes.NotImported)
    assert f"Secrets Manager (the secret {SECRET})" in outcome.message
    assert "docker-hub/ ->" in outcome.message
    assert len(stub.requests("BatchGetImage")) == 1


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        ("UpstreamAccessDenied", f"the secret {SECRET}"),
        ("UpstreamTooManyRequests", f"the secret {SECRET}"),
        ("UpstreamUnavailable", "the upstream registry was unavailable to ECR"),
    ],
)
def test_an_upstream_failure_code_names_the_rule_and_the_likely_cause(
    client: ecr.EcrClient,
    stub: ecr_stub.EcrStub,
    upstream: oci_stub.OciStub,
    manifest: bytes,
    code: str,
    cause: str,
) -> None:
    stub.add_repository(CACHED.name)
    stub.configure(failures={"1.25": code})
    upstream_has(upstream, manifest)

    outcome = lookup(client, tag())

    assert isinstance(outcome, outcomes.NotImported)
    assert code in outcome.message
    assert cause in outcome.message
    assert "pull-through cache rule docker-hub/" in outcome.message


@pytest.mark.parametrize("code", ["KmsError", "ImageInaccessible"])
def test_a_failure_about_an_image_ecr_holds_does_not_ask_the_upstream(
    client: ecr.EcrClient,
    stub: ecr_stub.EcrStub,
    upstream: oci_stub.OciStub,
    manifest: bytes,
    code: str,
) -> None:
    stub.add_image(CACHED.name, "1.25", manifest, ecr_emulator.DOCKER_MANIFEST)
    stub.configure(failures={"1.25": code})
    upstream_has(upstream, manifest)

    outcome = lookup(client, tag())

    assert isinstance(outcome, outcomes.Unknown)
    assert code in outcome.message
    assert upstream.received() == []


def test_a_digest_ecr_does_not_hold_is_not_imported_since_a_first_pull_by_digest_fails(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, upstream: oci_stub.OciStub, manifest: bytes
) -> None:
    stub.add_repository(CACHED.name)
    digest = references.Digest(ecr_emulator.digest_of(manifest))
    upstream.manifests[(UPSTREAM_NAME, digest)] = (manifest, ecr_emulator.DOCKER_MANIFEST)

    outcome = lookup(client, outcomes.Query(CACHED, digest=digest))

    assert isinstance(outcome, outcomes.NotImported)


def test_an_upstream_that_cannot_be_asked_leaves_the_image_unknown_naming_the_rule(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, upstream: oci_stub.OciStub
) -> None:
    stub.add_repository(CACHED.name)
    upstream.queue(*[oci_stub.Answer(503)] * 20)

    outcome = client.lookup(CACHED, [tag()], timeout=2.0)[tag()]

    assert isinstance(outcome, outcomes.Unknown)
    assert "pull-through cache rule docker-hub/" in outcome.message


# The rules


def test_the_rules_are_read_once_per_registry_across_pages(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, upstream: oci_stub.OciStub, manifest: bytes
) -> None:
    stub.add_repository(CACHED.name)
    upstream_has(upstream, manifest)

    first = lookup(client, tag())
    second = lookup(client, tag())

    assert isinstance(first, outcomes.NotImported)
    assert isinstance(second, outcomes.NotImported)
    # Three rules in pages of two: the rule that matches is on the second page.
    assert len(stub.requests("DescribePullThroughCacheRules")) == 2
    (request, *_) = stub.requests("DescribePullThroughCacheRules")
    assert request["body"]["registryId"] == ecr_emulator.ACCOUNT


def test_a_repository_under_no_rule_is_missing_without_asking_any_upstream(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, upstream: oci_stub.OciStub
) -> None:
    stub.add_repository(PLAIN.name)

    outcome = lookup(client, tag("v1", PLAIN))

    assert isinstance(outcome, outcomes.Missing)
    assert upstream.received() == []


def test_rules_that_cannot_be_read_leave_a_repository_plain(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, upstream: oci_stub.OciStub, manifest: bytes
) -> None:
    stub.add_repository(CACHED.name)
    upstream_has(upstream, manifest)
    stub.queue(ecr_stub.ANSWER, "AccessDeniedException")

    outcome = lookup(client, tag())

    assert isinstance(outcome, outcomes.Missing)
    assert upstream.received() == []


def test_a_rule_maps_the_repository_under_its_prefix_to_the_upstream_repository() -> None:
    rule = ecr.PullThroughRule("ecr-public", "public.ecr.aws")
    ecr_to_ecr = ecr.PullThroughRule(
        "", "https://444455556666.dkr.ecr.eu-west-1.amazonaws.com/", upstream_prefix="team"
    )

    assert rule.covers("ecr-public/nginx/nginx")
    assert not rule.covers("ecr-publicity/nginx")
    assert rule.upstream("ecr-public/nginx/nginx") == outcomes.Repository(
        "public.ecr.aws", "nginx/nginx"
    )
    assert ecr_to_ecr.upstream("app") == outcomes.Repository(
        "444455556666.dkr.ecr.eu-west-1.amazonaws.com", "team/app"
    )


def test_an_unreachable_ecr_is_not_asked_for_its_rules_as_well(
    aws_session: boto3.session.Session, upstream: oci_stub.OciStub
) -> None:
    # A port nothing listens on: every connection is refused, as in an ECR outage.
    upstream_client = oci.OciClient(insecure_registries=[upstream.host])
    unreachable = ecr.EcrClient(
        endpoint_url=f"http://127.0.0.1:{ports.free_port()}",
        session=aws_session,
        upstream=upstream_client,
    )
    described = metrics.REGISTRY_CALLS.labels("DescribePullThroughCacheRules", "error")
    before = described._value.get()
    try:
        with pytest.raises(errors.RegistryError, match="refused"):
            unreachable.lookup(CACHED, [tag()], timeout=BUDGET)
    finally:
        upstream_client.close()
    assert described._value.get() == before
    assert upstream.received() == []
