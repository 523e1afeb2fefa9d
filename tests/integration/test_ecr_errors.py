"""The ECR client's error paths, against an ECR-protocol stub over real HTTP.

moto cannot throttle, hang, reset, report KMS or upstream failures, or hand back a
manifest that does not match its digest; the stub does all of that and records
every request it received.
"""

import time
from collections.abc import Iterator

import boto3
import pytest

from tests.support import ecr_emulator, ecr_stub, ports
from webhook import errors, metrics
from webhook.core import outcomes, references
from webhook.registries import ecr, resolver

REPOSITORY = outcomes.Repository(ecr_emulator.registry_host(), "team/app")
BUDGET = 30.0
"""Room for every lookup that is about what is sent or what comes back, however loaded
the machine: such a lookup ends as soon as it is answered."""
SPENT_BUDGET = 3.0
"""For lookups that retry until their budget is spent: room for more than one attempt."""


@pytest.fixture
def stub() -> Iterator[ecr_stub.EcrStub]:
    with ecr_stub.EcrStub() as running:
        yield running


@pytest.fixture(scope="module")
def aws_session() -> boto3.session.Session:
    """One session for the module: loading the ECR model anew for every test is slow."""
    return ecr_emulator.session()


@pytest.fixture
def client(stub: ecr_stub.EcrStub, aws_session: boto3.session.Session) -> ecr.EcrClient:
    # Timeouts a slow answer from a loaded machine does not reach: a timed-out attempt
    # would be retried and change the number of requests the tests count.
    return ecr.EcrClient(
        endpoint_url=stub.url,
        session=aws_session,
        connect_timeout=10.0,
        read_timeout=10.0,
    )


@pytest.fixture
def digest(stub: ecr_stub.EcrStub) -> references.Digest:
    """The digest of the image tagged v1 in team/app."""
    manifest = ecr_emulator.docker_manifest()
    return references.Digest(
        stub.add_image(REPOSITORY.name, "v1", manifest, ecr_emulator.DOCKER_MANIFEST)
    )


def v1() -> outcomes.Query:
    return outcomes.Query(REPOSITORY, tag="v1")


def lookup(client: ecr.EcrClient, *queries: outcomes.Query) -> outcomes.Outcome:
    """The outcome of the first query (v1 when none is given)."""
    queries = queries or (v1(),)
    return client.lookup(REPOSITORY, queries, timeout=BUDGET)[queries[0]]


def registry_calls(outcome: str, operation: str = ecr.BATCH_GET_IMAGE) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "digestguard_registry_calls_total", {"operation": operation, "outcome": outcome}
    )
    return value or 0.0


# What is sent


def test_accepted_media_types_are_always_sent(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    lookup(client)

    (request,) = stub.requests("BatchGetImage")
    assert request["body"]["acceptedMediaTypes"] == [
        ecr_emulator.OCI_INDEX,
        ecr_emulator.OCI_MANIFEST,
        ecr_emulator.DOCKER_MANIFEST_LIST,
        ecr_emulator.DOCKER_MANIFEST,
    ]


def test_the_account_of_the_registry_host_is_sent_as_registry_id(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    lookup(client)

    (request,) = stub.requests("BatchGetImage")
    assert request["body"]["registryId"] == ecr_emulator.ACCOUNT


def test_each_query_is_sent_as_a_tag_or_a_digest(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    lookup(client, v1(), outcomes.Query(REPOSITORY, digest=digest))

    (request,) = stub.requests("BatchGetImage")
    assert sorted(request["body"]["imageIds"], key=str) == sorted(
        [{"imageTag": "v1"}, {"imageDigest": digest}], key=str
    )


def test_more_than_100_images_are_asked_in_requests_of_at_most_100(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub
) -> None:
    stub.configure(synthesize=True)
    queries = [outcomes.Query(REPOSITORY, tag=f"v{n}") for n in range(150)]

    results = client.lookup(REPOSITORY, queries, timeout=BUDGET)

    assert sorted(len(r["body"]["imageIds"]) for r in stub.requests()) == [50, 100]
    assert all(isinstance(o, outcomes.Found) for o in results.values())


def test_when_a_later_request_fails_the_earlier_answers_are_kept(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub
) -> None:
    stub.configure(synthesize=True)
    stub.queue(ecr_stub.ANSWER, "AccessDeniedException")
    queries = [outcomes.Query(REPOSITORY, tag=f"v{n}") for n in range(150)]

    results = client.lookup(REPOSITORY, queries, timeout=BUDGET)

    kinds = [type(outcome).__name__ for outcome in results.values()]
    assert (kinds.count("Found"), kinds.count("Unknown")) == (100, 50)


def test_a_repository_name_ecr_cannot_hold_is_missing_without_a_call(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub
) -> None:
    one_letter = outcomes.Repository(REPOSITORY.registry, "a")
    query = outcomes.Query(one_letter, tag="v1")

    outcome = client.lookup(one_letter, [query], timeout=BUDGET)[query]

    assert isinstance(outcome, outcomes.Missing)
    assert outcome.code == ecr.INVALID_REPOSITORY_NAME
    assert stub.requests() == []


def test_a_host_that_is_not_ecr_is_a_registry_error(client: ecr.EcrClient) -> None:
    elsewhere = outcomes.Repository("registry.example.com", "team/app")

    with pytest.raises(errors.RegistryError, match=r"not an ECR private registry"):
        client.lookup(elsewhere, [outcomes.Query(elsewhere, tag="v1")], timeout=BUDGET)


# What comes back


def test_a_digest_query_is_found_by_its_digest(
    client: ecr.EcrClient, digest: references.Digest
) -> None:
    query = outcomes.Query(REPOSITORY, digest=digest)

    assert lookup(client, query) == outcomes.Found(digest, ecr_emulator.DOCKER_MANIFEST)


def test_a_missing_digest_is_reported_missing(
    client: ecr.EcrClient, digest: references.Digest
) -> None:
    query = outcomes.Query(REPOSITORY, digest=references.Digest("sha256:" + "0" * 64))

    outcome = lookup(client, query)

    assert isinstance(outcome, outcomes.Missing)
    assert outcome.code == "ImageNotFound"


def test_a_manifest_that_does_not_hash_to_its_digest_is_corrupt(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    stub.configure(corrupt=["v1"])

    outcome = lookup(client)

    assert isinstance(outcome, outcomes.Corrupt)
    assert digest in outcome.message


def test_an_image_the_answer_does_not_mention_is_unknown(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    stub.configure(omit=["v1"])

    assert isinstance(lookup(client), outcomes.Unknown)


@pytest.mark.parametrize(
    "code",
    [
        "ImageNotFound",
        "ImageTagDoesNotMatchDigest",
        "InvalidImageTag",
        "InvalidImageDigest",
        "MissingDigestAndTag",
    ],
)
def test_a_failure_code_saying_the_image_does_not_exist_is_missing(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest, code: str
) -> None:
    stub.configure(failures={"v1": code})

    outcome = lookup(client)

    assert isinstance(outcome, outcomes.Missing)
    assert outcome.code == code


@pytest.mark.parametrize(
    "code",
    [
        "KmsError",
        "UpstreamAccessDenied",
        "UpstreamTooManyRequests",
        "UpstreamUnavailable",
        "ImageInaccessible",
        "ImageReferencedByManifestList",
        "SomeCodeFromTheFuture",
    ],
)
def test_a_failure_code_that_cannot_tell_is_unknown(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest, code: str
) -> None:
    stub.configure(failures={"v1": code})

    outcome = lookup(client)

    assert isinstance(outcome, outcomes.Unknown)
    assert code in outcome.message


def test_a_failure_code_is_not_retried(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    stub.configure(failures={"v1": "UpstreamUnavailable"})

    lookup(client)

    assert len(stub.requests()) == 1


def test_a_missing_repository_is_missing_for_every_image(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub
) -> None:
    queries = [outcomes.Query(REPOSITORY, tag=t) for t in ("v1", "v2")]

    results = client.lookup(REPOSITORY, queries, timeout=BUDGET)

    assert {o.code for o in results.values() if isinstance(o, outcomes.Missing)} == {
        ecr.REPOSITORY_NOT_FOUND
    }
    assert len(results) == 2


# Archived images


def test_an_archived_image_is_archived_with_the_command_that_restores_it(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    stub.configure(archived={"v1": "ARCHIVED"})

    outcome = lookup(client)

    assert isinstance(outcome, outcomes.Archived)
    assert outcome.status == "ARCHIVED"
    assert (
        "aws ecr update-image-storage-class --registry-id 123456789012 --region us-east-1"
        f" --repository-name team/app --image-id imageDigest={digest}"
        " --target-storage-class STANDARD"
    ) in outcome.message


def test_an_archived_digest_is_archived(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    stub.configure(archived={"v1": "ARCHIVED"})

    outcome = lookup(client, outcomes.Query(REPOSITORY, digest=digest))

    assert isinstance(outcome, outcomes.Archived)


def test_an_image_being_restored_is_archived_until_the_restore_completes(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    stub.configure(archived={"v1": "ACTIVATING"})

    outcome = lookup(client)

    assert isinstance(outcome, outcomes.Archived)
    assert (outcome.status, "being restored" in outcome.message) == ("ACTIVATING", True)


def test_the_archive_status_is_read_for_the_inaccessible_images_only(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    stub.add_image(REPOSITORY.name, "v2", ecr_emulator.oci_manifest(), ecr_emulator.OCI_MANIFEST)
    stub.configure(archived={"v1": "ARCHIVED"})

    results = client.lookup(
        REPOSITORY, [v1(), outcomes.Query(REPOSITORY, tag="v2")], timeout=BUDGET
    )

    (request,) = stub.requests("DescribeImages")
    assert request["body"]["imageIds"] == [{"imageTag": "v1"}]
    assert request["body"]["filter"] == {"imageStatus": "ANY"}
    assert request["body"]["registryId"] == ecr_emulator.ACCOUNT
    assert isinstance(results[outcomes.Query(REPOSITORY, tag="v2")], outcomes.Found)


def test_no_archive_status_is_read_when_every_image_is_readable(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    lookup(client)

    assert stub.requests("DescribeImages") == []


def test_an_inaccessible_image_that_is_not_archived_stays_unknown(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    stub.configure(failures={"v1": "ImageInaccessible"})

    outcome = lookup(client)

    assert isinstance(outcome, outcomes.Unknown)
    assert len(stub.requests("DescribeImages")) == 1


def test_access_denied_on_describe_images_is_unknown_naming_that_action(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    stub.configure(archived={"v1": "ARCHIVED"})
    stub.queue(ecr_stub.ANSWER, "AccessDeniedException")

    outcome = lookup(client)

    assert isinstance(outcome, outcomes.Unknown)
    assert "ImageInaccessible" in outcome.message
    assert "ecr:DescribeImages on arn:aws:ecr:us-east-1:123456789012:repository/team/app" in (
        outcome.message
    )


async def test_an_archived_image_is_answered_as_archived_through_the_resolver_not_stale(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    the_resolver = resolver.Resolver(client, ttl=0.0)
    try:
        first = await the_resolver.resolve({v1(): 600.0}, deadline=time.monotonic() + BUDGET)
        stub.configure(archived={"v1": "ARCHIVED"})
        second = await the_resolver.resolve({v1(): 600.0}, deadline=time.monotonic() + BUDGET)
        circuit = the_resolver.circuit(REPOSITORY.registry).state.value
    finally:
        await the_resolver.aclose()

    assert isinstance(first[v1()], outcomes.Found)
    assert isinstance(second[v1()], outcomes.Archived)
    assert circuit == "closed"


# Whole-call errors


@pytest.mark.parametrize(
    "behaviour",
    [
        "ThrottlingException",
        "LimitExceededException",
        "ServerException",
        ecr_stub.RESET,
    ],
)
def test_a_transient_error_is_retried(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest, behaviour: str
) -> None:
    stub.queue(behaviour)

    outcome = lookup(client)

    assert outcome == outcomes.Found(digest, ecr_emulator.DOCKER_MANIFEST)
    assert len(stub.requests()) == 2


def test_unable_to_get_upstream_image_is_not_retried(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    # The API model: "usually caused" by the upstream credential in Secrets Manager.
    stub.configure(always="UnableToGetUpstreamImageException")

    with pytest.raises(errors.RegistryError, match="UnableToGetUpstreamImageException"):
        lookup(client)
    assert len(stub.requests("BatchGetImage")) == 1


def test_botocore_does_not_retry_on_its_own(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    stub.queue("ThrottlingException", "ThrottlingException")

    lookup(client)

    assert len(stub.requests()) == 3


def test_persistent_throttling_ends_in_a_registry_error_once_the_budget_is_spent(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    stub.configure(always="ThrottlingException")

    with pytest.raises(errors.RegistryError, match="ThrottlingException"):
        client.lookup(REPOSITORY, [v1()], timeout=SPENT_BUDGET)
    assert len(stub.requests()) > 1


def test_throttled_attempts_are_counted_as_throttled(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    stub.queue("ThrottlingException", "ThrottlingException")
    before = registry_calls("throttled")

    lookup(client)

    assert registry_calls("throttled") == before + 2


def test_a_hanging_registry_is_bounded_by_the_time_budget(
    stub: ecr_stub.EcrStub, aws_session: boto3.session.Session, digest: references.Digest
) -> None:
    stub.configure(always=ecr_stub.HANG)
    client = ecr.EcrClient(
        endpoint_url=stub.url, session=aws_session, connect_timeout=10.0, read_timeout=0.2
    )

    with pytest.raises(errors.RegistryError, match="ReadTimeout"):
        client.lookup(REPOSITORY, [v1()], timeout=0.5)


def test_no_attempt_is_made_without_time_left(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub
) -> None:
    with pytest.raises(errors.DeadlineExceeded):
        client.lookup(REPOSITORY, [v1()], timeout=0.0)
    assert stub.requests() == []


def test_access_denied_names_the_iam_action_to_grant(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub
) -> None:
    stub.configure(always="AccessDeniedException")

    with pytest.raises(errors.RegistryError, match=r"ecr:BatchGetImage on arn:aws:ecr:us-east-1"):
        lookup(client)
    assert len(stub.requests()) == 1


def test_an_invalid_parameter_answer_is_a_registry_error_not_a_missing_image(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub
) -> None:
    stub.configure(always="InvalidParameterException")

    with pytest.raises(
        errors.RegistryError, match=r"refused the BatchGetImage request .* as invalid"
    ):
        lookup(client)
    assert len(stub.requests()) == 1


async def test_a_throttled_registry_makes_the_resolver_answer_unknown_with_the_reason(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub, digest: references.Digest
) -> None:
    stub.configure(always="ThrottlingException")
    the_resolver = resolver.Resolver(client)
    try:
        results = await the_resolver.resolve({v1(): 0.0}, deadline=time.monotonic() + SPENT_BUDGET)
    finally:
        await the_resolver.aclose()

    outcome = results[v1()]
    assert isinstance(outcome, outcomes.Unknown)
    assert "ThrottlingException" in outcome.message


# Tag mutability


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"imageTagMutability": "MUTABLE"},
            outcomes.TagMutability(outcomes.Mutability.MUTABLE),
        ),
        (
            {"imageTagMutability": "IMMUTABLE"},
            outcomes.TagMutability(outcomes.Mutability.IMMUTABLE),
        ),
        (
            {
                "imageTagMutability": "IMMUTABLE_WITH_EXCLUSION",
                "imageTagMutabilityExclusionFilters": [
                    {"filterType": "WILDCARD", "filter": "latest"},
                    {"filterType": "WILDCARD", "filter": "dev-*"},
                ],
            },
            outcomes.TagMutability(
                outcomes.Mutability.IMMUTABLE_WITH_EXCLUSION, ("latest", "dev-*")
            ),
        ),
        (
            {
                "imageTagMutability": "MUTABLE_WITH_EXCLUSION",
                "imageTagMutabilityExclusionFilters": [
                    {"filterType": "WILDCARD", "filter": "release-*"}
                ],
            },
            outcomes.TagMutability(outcomes.Mutability.MUTABLE_WITH_EXCLUSION, ("release-*",)),
        ),
    ],
    ids=["mutable", "immutable", "immutable-with-exclusion", "mutable-with-exclusion"],
)
def test_each_mutability_mode_is_reported_with_its_exclusions(
    client: ecr.EcrClient,
    stub: ecr_stub.EcrStub,
    fields: dict[str, object],
    expected: outcomes.TagMutability,
) -> None:
    stub.add_repository(REPOSITORY.name, **fields)

    assert client.mutability(REPOSITORY, timeout=BUDGET) == expected


def test_a_repository_without_exclusion_filters_has_none(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub
) -> None:
    stub.add_repository(REPOSITORY.name, imageTagMutability="IMMUTABLE")

    outcome = client.mutability(REPOSITORY, timeout=BUDGET)

    assert outcome == outcomes.TagMutability(outcomes.Mutability.IMMUTABLE, ())


def test_an_exclusion_filter_of_an_unknown_type_makes_mutability_unknown(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub
) -> None:
    stub.add_repository(
        REPOSITORY.name,
        imageTagMutability="IMMUTABLE_WITH_EXCLUSION",
        imageTagMutabilityExclusionFilters=[{"filterType": "REGEX", "filter": "v.*"}],
    )

    assert isinstance(client.mutability(REPOSITORY, timeout=BUDGET), outcomes.Unknown)


def test_a_mutability_mode_from_the_future_is_unknown(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub
) -> None:
    stub.add_repository(REPOSITORY.name, imageTagMutability="IMMUTABLE_ON_TUESDAYS")

    assert isinstance(client.mutability(REPOSITORY, timeout=BUDGET), outcomes.Unknown)


def test_describe_repositories_throttling_is_retried(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub
) -> None:
    stub.add_repository(REPOSITORY.name, imageTagMutability="IMMUTABLE")
    stub.queue("ThrottlingException")

    outcome = client.mutability(REPOSITORY, timeout=BUDGET)

    assert outcome == outcomes.TagMutability(outcomes.Mutability.IMMUTABLE)
    assert len(stub.requests("DescribeRepositories")) == 2


def test_access_denied_on_describe_repositories_names_that_action(
    client: ecr.EcrClient, stub: ecr_stub.EcrStub
) -> None:
    stub.configure(always="AccessDeniedException")

    with pytest.raises(errors.RegistryError, match="ecr:DescribeRepositories"):
        client.mutability(REPOSITORY, timeout=BUDGET)


def test_a_refused_connection_is_tried_twice_not_until_the_budget_is_spent(
    aws_session: boto3.session.Session,
) -> None:
    # Nothing listens: backing off until the deadline would only make each admission
    # wait its whole budget for the same refusal.
    holder, port = ports.refusing_port()
    with holder:
        client = ecr.EcrClient(endpoint_url=f"http://127.0.0.1:{port}", session=aws_session)
        before = metrics.REGISTRY_CALLS.labels(ecr.BATCH_GET_IMAGE, "error")._value.get()
        with pytest.raises(errors.RegistryError, match="refused 2 times"):
            client.lookup(REPOSITORY, [v1()], timeout=30.0)
        after = metrics.REGISTRY_CALLS.labels(ecr.BATCH_GET_IMAGE, "error")._value.get()
    assert after - before == 2
