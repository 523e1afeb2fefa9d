"""Rate-limit-friendly lookups (issue 10, item 3): a tag is asked with a HEAD, which
Docker Hub does not count as a pull; a manifest is fetched only to verify a digest not
verified before; a 429 to the HEAD is throttling, retried after its Retry-After.

Against the OCI stub (`head` on) for what a test must count, and the real CNCF
distribution registry, which answers HEAD as Docker Hub does."""

import hashlib
from collections.abc import Iterator

import pytest

from tests.support import ecr_emulator, oci_registry, oci_stub
from webhook import errors, metrics
from webhook.core import outcomes, references
from webhook.registries.oci import client as oci

TIMEOUT = 5.0


def digest_of(body: bytes) -> references.Digest:
    return references.Digest("sha256:" + hashlib.sha256(body).hexdigest())


@pytest.fixture
def stub() -> Iterator[oci_stub.OciStub]:
    with oci_stub.OciStub() as running:
        running.head = True
        yield running


@pytest.fixture
def stub_client(stub: oci_stub.OciStub) -> Iterator[oci.OciClient]:
    the_client = oci.OciClient(insecure_registries=[stub.host])
    yield the_client
    the_client.close()


def serve(stub: oci_stub.OciStub, seed: str, tag: str = "v1") -> bytes:
    manifest = ecr_emulator.docker_manifest(seed=seed)
    stub.manifests[("app", tag)] = (manifest, ecr_emulator.DOCKER_MANIFEST)
    stub.manifests[("app", digest_of(manifest))] = (manifest, ecr_emulator.DOCKER_MANIFEST)
    return manifest


def query(stub: oci_stub.OciStub, tag: str = "v1") -> outcomes.Query:
    return outcomes.Query(outcomes.Repository(stub.host, "app"), tag=tag)


def look_up(client: oci.OciClient, the_query: outcomes.Query) -> outcomes.Outcome:
    return client.lookup(the_query.repository, [the_query], timeout=TIMEOUT)[the_query]


def requests(stub: oci_stub.OciStub) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in stub.received() if "/manifests/" in r.path]


def test_a_new_tag_is_asked_with_a_head_then_its_manifest_fetched_by_digest_and_verified(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    manifest = serve(stub, "head-first")
    found = look_up(stub_client, query(stub))
    assert found == outcomes.Found(digest_of(manifest), ecr_emulator.DOCKER_MANIFEST)
    assert requests(stub) == [
        ("HEAD", "/v2/app/manifests/v1"),
        ("GET", f"/v2/app/manifests/{digest_of(manifest)}"),
    ]


def test_a_tag_whose_digest_was_verified_before_costs_one_head_and_no_pull(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    manifest = serve(stub, "verified-once")
    look_up(stub_client, query(stub))
    before = len(requests(stub))
    found = look_up(stub_client, query(stub))
    assert found == outcomes.Found(digest_of(manifest), ecr_emulator.DOCKER_MANIFEST)
    assert requests(stub)[before:] == [("HEAD", "/v2/app/manifests/v1")]


def test_a_tag_moved_to_a_new_digest_is_verified_again(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    serve(stub, "old")
    look_up(stub_client, query(stub))
    moved = serve(stub, "new")
    before = len(requests(stub))
    assert look_up(stub_client, query(stub)) == outcomes.Found(
        digest_of(moved), ecr_emulator.DOCKER_MANIFEST
    )
    assert requests(stub)[before:] == [
        ("HEAD", "/v2/app/manifests/v1"),
        ("GET", f"/v2/app/manifests/{digest_of(moved)}"),
    ]


def test_a_digest_not_verified_before_is_fetched_without_a_head(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    manifest = serve(stub, "by-digest")
    the_query = outcomes.Query(outcomes.Repository(stub.host, "app"), digest=digest_of(manifest))
    assert isinstance(look_up(stub_client, the_query), outcomes.Found)
    assert requests(stub) == [("GET", f"/v2/app/manifests/{digest_of(manifest)}")]
    assert isinstance(look_up(stub_client, the_query), outcomes.Found)
    assert requests(stub)[1:] == [("HEAD", f"/v2/app/manifests/{digest_of(manifest)}")]


def test_a_head_that_reports_a_digest_whose_bytes_differ_is_corrupt_never_remembered(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    serve(stub, "lying")
    liar = "sha256:" + "1" * 64
    stub.reported_digests[("app", "v1")] = liar
    stub.manifests[("app", liar)] = stub.manifests[("app", "v1")]
    stub.reported_digests[("app", liar)] = liar
    assert isinstance(look_up(stub_client, query(stub)), outcomes.Corrupt)
    assert isinstance(look_up(stub_client, query(stub)), outcomes.Corrupt)


def test_a_missing_tag_is_told_by_a_get_with_the_registry_error_code(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    missing = look_up(stub_client, query(stub, "nope"))
    assert isinstance(missing, outcomes.Missing)
    assert missing.code == "MANIFEST_UNKNOWN"
    assert requests(stub) == [("HEAD", "/v2/app/manifests/nope"), ("GET", "/v2/app/manifests/nope")]


def test_a_registry_without_head_is_asked_with_a_get() -> None:
    with oci_stub.OciStub() as no_head:
        manifest = serve(no_head, "no-head")
        client = oci.OciClient(insecure_registries=[no_head.host])
        try:
            found = look_up(client, query(no_head))
        finally:
            client.close()
        assert found == outcomes.Found(digest_of(manifest), ecr_emulator.DOCKER_MANIFEST)
        assert [method for method, _ in requests(no_head)] == ["HEAD", "GET"]


def head_calls(outcome: str) -> float:
    labels = {"operation": oci.HEAD_MANIFEST, "outcome": outcome}
    return metrics.REGISTRY.get_sample_value("digestguard_registry_calls_total", labels) or 0.0


def test_a_429_to_the_head_is_throttling_and_retried_after_its_retry_after(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    manifest = serve(stub, "throttled")
    stub.queue(oci_stub.Answer(429, headers={"Retry-After": "0"}))
    before = head_calls("throttled")
    found = look_up(stub_client, query(stub))
    assert found == outcomes.Found(digest_of(manifest), ecr_emulator.DOCKER_MANIFEST)
    assert head_calls("throttled") - before == 1
    assert [method for method, _ in requests(stub)] == ["HEAD", "HEAD", "GET"]


def test_a_retry_after_beyond_the_budget_is_a_throttled_registry_error_at_once(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    serve(stub, "throttled-long")
    stub.queue(oci_stub.Answer(429, headers={"Retry-After": "30"}))
    with pytest.raises(errors.RegistryError, match="HTTP 429"):
        look_up(stub_client, query(stub))
    assert requests(stub) == [("HEAD", "/v2/app/manifests/v1")]


def test_the_real_registry_answers_a_second_lookup_of_a_tag_with_a_head_only() -> None:
    with oci_registry.running_registry() as registry:
        digest = registry.push_image("team/api", "1", seed="real-head")
        client = oci.OciClient(insecure_registries=[registry.host])
        the_query = outcomes.Query(outcomes.Repository(registry.host, "team/api"), tag="1")
        try:
            first = client.lookup(the_query.repository, [the_query], timeout=TIMEOUT)
            gets = metrics.REGISTRY.get_sample_value(
                "digestguard_registry_calls_total",
                {"operation": oci.GET_MANIFEST, "outcome": "ok"},
            )
            second = client.lookup(the_query.repository, [the_query], timeout=TIMEOUT)
            gets_after = metrics.REGISTRY.get_sample_value(
                "digestguard_registry_calls_total",
                {"operation": oci.GET_MANIFEST, "outcome": "ok"},
            )
        finally:
            client.close()
    assert first[the_query] == second[the_query]
    assert isinstance(second[the_query], outcomes.Found)
    assert second[the_query].digest == digest  # type: ignore[union-attr]
    assert gets_after == gets
