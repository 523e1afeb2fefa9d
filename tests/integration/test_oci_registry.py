"""The OCI client against a real registry (CNCF distribution) and, for what it will not
do, against a small stub: digests found and verified, missing images, integrity
failures, throttling within the time budget, and the anonymous token flow."""

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest

from tests.support import ecr_emulator, oci_registry, oci_stub, ports
from webhook import errors, metrics
from webhook.core import outcomes, references
from webhook.registries import protocol
from webhook.registries.oci import client as oci

TIMEOUT = 5.0


def unique(prefix: str = "app") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:8]}"


def digest_of(body: bytes) -> references.Digest:
    return references.Digest("sha256:" + hashlib.sha256(body).hexdigest())


@pytest.fixture(scope="module")
def registry() -> Iterator[oci_registry.Registry]:
    """The open registry: plain HTTP, no authentication."""
    with oci_registry.running_registry() as running:
        yield running


@pytest.fixture(scope="module")
def secured_registry() -> Iterator[oci_registry.Registry]:
    """HTTPS with a self-signed certificate, and distribution's token authentication."""
    with oci_registry.running_registry(secured=True) as running:
        yield running


@pytest.fixture
def client(registry: oci_registry.Registry) -> Iterator[oci.OciClient]:
    the_client = oci.OciClient(insecure_registries=[registry.host])
    yield the_client
    the_client.close()


@pytest.fixture
def stub() -> Iterator[oci_stub.OciStub]:
    with oci_stub.OciStub() as running:
        yield running


@pytest.fixture
def stub_client(stub: oci_stub.OciStub) -> Iterator[oci.OciClient]:
    the_client = oci.OciClient(insecure_registries=[stub.host])
    yield the_client
    the_client.close()


def by_tag(registry: str, name: str, tag: str = "v1") -> outcomes.Query:
    return outcomes.Query(outcomes.Repository(registry, name), tag=tag)


def by_digest(registry: str, name: str, digest: str) -> outcomes.Query:
    return outcomes.Query(outcomes.Repository(registry, name), digest=references.Digest(digest))


def look_up(
    the_client: oci.OciClient, *queries: outcomes.Query, timeout: float = TIMEOUT
) -> dict[outcomes.Query, outcomes.Outcome]:
    answers = the_client.lookup(queries[0].repository, queries, timeout=timeout)
    assert set(answers) == set(queries)
    return dict(answers)


# The real registry, open


@pytest.mark.parametrize(
    "media_type",
    [
        pytest.param(ecr_emulator.DOCKER_MANIFEST, id="docker-v2"),
        pytest.param(ecr_emulator.OCI_MANIFEST, id="oci-manifest"),
        pytest.param(ecr_emulator.OCI_INDEX, id="oci-index"),
        pytest.param(ecr_emulator.DOCKER_MANIFEST_LIST, id="docker-manifest-list"),
    ],
)
def test_a_tag_is_found_with_the_digest_of_the_manifest_it_names(
    registry: oci_registry.Registry, client: oci.OciClient, media_type: str
) -> None:
    name = unique()
    digest = registry.push_image(name, "v1", seed=name, media_type=media_type)
    query = by_tag(registry.host, name)
    assert look_up(client, query) == {query: outcomes.Found(references.Digest(digest), media_type)}


def test_a_digest_query_finds_the_manifest_by_its_digest(
    registry: oci_registry.Registry, client: oci.OciClient
) -> None:
    name = unique()
    digest = registry.push_image(name, "v1", seed=name, media_type=ecr_emulator.OCI_INDEX)
    query = by_digest(registry.host, name, digest)
    assert look_up(client, query)[query] == outcomes.Found(
        references.Digest(digest), ecr_emulator.OCI_INDEX
    )


def test_tags_and_digests_of_one_repository_are_answered_in_one_lookup(
    registry: oci_registry.Registry, client: oci.OciClient
) -> None:
    name = unique()
    v1 = registry.push_image(name, "v1", seed=f"{name}:v1")
    v2 = registry.push_image(name, "v2", seed=f"{name}:v2")
    queries = (
        by_tag(registry.host, name, "v1"),
        by_tag(registry.host, name, "v2"),
        by_digest(registry.host, name, v1),
        by_tag(registry.host, name, "v3"),
    )
    answers = look_up(client, *queries)
    assert [getattr(answers[q], "digest", None) for q in queries] == [v1, v2, v1, None]


def test_a_missing_tag_is_missing(registry: oci_registry.Registry, client: oci.OciClient) -> None:
    name = unique()
    registry.push_image(name, "v1", seed=name)
    query = by_tag(registry.host, name, "nope")
    outcome = look_up(client, query)[query]
    assert isinstance(outcome, outcomes.Missing)
    assert outcome.code == "MANIFEST_UNKNOWN"


def test_a_digest_that_is_not_there_is_missing(
    registry: oci_registry.Registry, client: oci.OciClient
) -> None:
    name = unique()
    registry.push_image(name, "v1", seed=name)
    query = by_digest(registry.host, name, digest_of(b"never pushed"))
    assert isinstance(look_up(client, query)[query], outcomes.Missing)


def test_a_repository_that_does_not_exist_is_missing(
    registry: oci_registry.Registry, client: oci.OciClient
) -> None:
    query = by_tag(registry.host, unique("never"))
    assert isinstance(look_up(client, query)[query], outcomes.Missing)


def test_a_plain_http_registry_not_listed_as_insecure_is_a_tls_error(
    registry: oci_registry.Registry,
) -> None:
    the_client = oci.OciClient()
    with pytest.raises(errors.RegistryError, match="--insecure-registries"):
        look_up(the_client, by_tag(registry.host, unique()))
    the_client.close()


# The real registry, HTTPS and token authentication


def test_the_anonymous_token_flow_resolves_a_tag_over_https(
    secured_registry: oci_registry.Registry,
) -> None:
    name = unique()
    digest = secured_registry.push_image(name, "v1", seed=name)
    the_client = oci.OciClient(ca_file=str(secured_registry.ca_file))
    query = by_tag(secured_registry.host, name)
    try:
        assert look_up(the_client, query)[query] == outcomes.Found(
            references.Digest(digest), ecr_emulator.DOCKER_MANIFEST
        )
    finally:
        the_client.close()


def test_a_token_is_reused_for_its_repository_until_it_expires(
    secured_registry: oci_registry.Registry,
) -> None:
    assert secured_registry.token_server is not None
    name = unique()
    secured_registry.push_image(name, "v1", seed=name)
    the_client = oci.OciClient(ca_file=str(secured_registry.ca_file))
    try:
        for tag in ("v1", "v2", "v1"):
            look_up(the_client, by_tag(secured_registry.host, name, tag))
    finally:
        the_client.close()
    assert secured_registry.token_server.requests_for(f"repository:{name}:pull") == 1


def test_a_repository_the_token_does_not_open_is_unknown(
    secured_registry: oci_registry.Registry,
) -> None:
    assert secured_registry.token_server is not None
    name = unique()
    secured_registry.push_image(name, "v1", seed=name)
    secured_registry.token_server.refused.add(name)
    the_client = oci.OciClient(ca_file=str(secured_registry.ca_file))
    queries = (by_tag(secured_registry.host, name, "v1"), by_tag(secured_registry.host, name, "v2"))
    try:
        answers = look_up(the_client, *queries)
    finally:
        the_client.close()
    assert all(isinstance(a, outcomes.Unknown) for a in answers.values())
    message = answers[queries[0]].message  # type: ignore[union-attr]
    assert "refused the anonymous token" in message
    assert "needs credentials" in message


def test_an_https_registry_whose_ca_is_not_trusted_is_a_tls_error(
    secured_registry: oci_registry.Registry,
) -> None:
    the_client = oci.OciClient()
    with pytest.raises(errors.RegistryError, match="--registry-ca-file"):
        look_up(the_client, by_tag(secured_registry.host, unique()))
    the_client.close()


# The stub: integrity failures, throttling and what a registry may answer


def test_a_manifest_that_does_not_hash_to_its_reported_digest_is_corrupt(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    manifest = ecr_emulator.docker_manifest(seed="corrupt")
    stub.manifests[("app", "v1")] = (manifest, ecr_emulator.DOCKER_MANIFEST)
    stub.reported_digests[("app", "v1")] = digest_of(b"something else")
    query = by_tag(stub.host, "app")
    outcome = look_up(stub_client, query)[query]
    assert isinstance(outcome, outcomes.Corrupt)
    assert "integrity check failed" in outcome.message


def test_a_digest_query_answered_with_other_bytes_is_corrupt(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    asked = digest_of(b"the manifest we asked for")
    stub.manifests[("app", asked)] = (
        ecr_emulator.docker_manifest(seed="other"),
        ecr_emulator.DOCKER_MANIFEST,
    )
    stub.reported_digests[("app", asked)] = asked
    query = by_digest(stub.host, "app", asked)
    assert isinstance(look_up(stub_client, query)[query], outcomes.Corrupt)


def test_a_digest_query_answered_under_another_digest_is_corrupt(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    manifest = ecr_emulator.docker_manifest(seed="relabelled")
    asked = digest_of(manifest)
    stub.manifests[("app", asked)] = (manifest, ecr_emulator.DOCKER_MANIFEST)
    stub.reported_digests[("app", asked)] = digest_of(b"another one")
    query = by_digest(stub.host, "app", asked)
    assert isinstance(look_up(stub_client, query)[query], outcomes.Corrupt)


def test_a_manifest_without_docker_content_digest_is_pinned_to_its_own_hash(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    manifest = ecr_emulator.oci_manifest(seed="no-header")
    stub.queue(oci_stub.Answer(200, manifest, {"Content-Type": ecr_emulator.OCI_MANIFEST}))
    query = by_tag(stub.host, "app")
    assert look_up(stub_client, query)[query] == outcomes.Found(
        digest_of(manifest), ecr_emulator.OCI_MANIFEST
    )


def test_an_answer_that_is_not_a_manifest_is_unknown(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    stub.queue(oci_stub.Answer(200, b"<html>login</html>", {"Content-Type": "text/html"}))
    query = by_tag(stub.host, "app")
    outcome = look_up(stub_client, query)[query]
    assert isinstance(outcome, outcomes.Unknown)
    assert "'text/html'" in outcome.message


def test_name_unknown_is_missing_for_every_image_of_the_repository_with_one_request(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    stub.missing_repositories.add("gone")
    queries = (by_tag(stub.host, "gone", "v1"), by_tag(stub.host, "gone", "v2"))
    answers = look_up(stub_client, *queries)
    assert {type(a) for a in answers.values()} == {outcomes.Missing}
    assert answers[queries[0]].code == "NAME_UNKNOWN"  # type: ignore[union-attr]
    assert stub.manifest_requests() == 1


def registry_calls(outcome: str) -> float:
    labels = {"operation": oci.GET_MANIFEST, "outcome": outcome}
    return metrics.REGISTRY.get_sample_value("digestguard_registry_calls_total", labels) or 0.0


def test_throttling_and_server_errors_are_retried_within_the_budget(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    manifest = ecr_emulator.docker_manifest(seed="retried")
    stub.manifests[("app", "v1")] = (manifest, ecr_emulator.DOCKER_MANIFEST)
    stub.queue(oci_stub.Answer(429), oci_stub.Answer(503))
    before = [registry_calls(o) for o in ("throttled", "error", "ok")]
    query = by_tag(stub.host, "app")
    assert look_up(stub_client, query)[query] == outcomes.Found(
        digest_of(manifest), ecr_emulator.DOCKER_MANIFEST
    )
    assert stub.manifest_requests() == 3
    after = [registry_calls(o) for o in ("throttled", "error", "ok")]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


def test_throttling_that_outlasts_the_budget_is_a_registry_error(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    stub.queue(*[oci_stub.Answer(429)] * 100)
    with pytest.raises(errors.RegistryError, match="HTTP 429"):
        look_up(stub_client, by_tag(stub.host, "app"), timeout=0.5)


def test_a_retry_after_longer_than_the_budget_ends_the_call_at_once(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    stub.queue(oci_stub.Answer(429, headers={"Retry-After": "30"}))
    with pytest.raises(errors.RegistryError, match="failed 1 time"):
        look_up(stub_client, by_tag(stub.host, "app"))
    assert stub.manifest_requests() == 1


def test_answers_already_given_are_kept_when_a_later_image_cannot_be_asked(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    manifest = ecr_emulator.docker_manifest(seed="kept")
    stub.manifests[("app", "a")] = (manifest, ecr_emulator.DOCKER_MANIFEST)
    first, second = by_tag(stub.host, "app", "a"), by_tag(stub.host, "app", "b")
    stub.queue(oci_stub.Answer(200, manifest, {"Content-Type": ecr_emulator.DOCKER_MANIFEST}))
    stub.queue(*[oci_stub.Answer(503)] * 100)
    answers = look_up(stub_client, first, second, timeout=2.0)
    assert isinstance(answers[first], outcomes.Found)
    assert isinstance(answers[second], outcomes.Unknown)


def test_a_kept_alive_connection_the_server_dropped_is_replaced_at_once(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    stub.manifests[("app", "v1")] = (
        ecr_emulator.docker_manifest(seed="kept-alive"),
        ecr_emulator.DOCKER_MANIFEST,
    )
    stub.drop_connections = True
    query = by_tag(stub.host, "app")
    errors_before = registry_calls("error")
    for _ in range(3):
        assert isinstance(look_up(stub_client, query)[query], outcomes.Found)
    assert stub.manifest_requests() == 3
    assert registry_calls("error") == errors_before


def test_a_redirect_is_followed(stub: oci_stub.OciStub, stub_client: oci.OciClient) -> None:
    manifest = ecr_emulator.docker_manifest(seed="moved")
    stub.manifests[("app", "v1")] = (manifest, ecr_emulator.DOCKER_MANIFEST)
    stub.queue(oci_stub.Answer(307, headers={"Location": "/v2/app/manifests/v1"}))
    query = by_tag(stub.host, "app")
    assert isinstance(look_up(stub_client, query)[query], outcomes.Found)


def test_the_token_stub_flow_caches_the_token_until_it_expires(stub: oci_stub.OciStub) -> None:
    now = [1000.0]
    the_client = oci.OciClient(insecure_registries=[stub.host], clock=lambda: now[0])
    stub.auth = oci_stub.BEARER
    stub.token_expires_in = 60
    stub.manifests[("app", "v1")] = (
        ecr_emulator.docker_manifest(seed="token"),
        ecr_emulator.DOCKER_MANIFEST,
    )
    query = by_tag(stub.host, "app")
    try:
        assert isinstance(look_up(the_client, query)[query], outcomes.Found)
        now[0] += 30
        assert isinstance(look_up(the_client, query)[query], outcomes.Found)
        assert stub.tokens_issued == 1
        now[0] += 30
        assert isinstance(look_up(the_client, query)[query], outcomes.Found)
        assert stub.tokens_issued == 2
    finally:
        the_client.close()
    token_requests = [r for r in stub.received() if r.path.startswith("/token")]
    assert "scope=repository%3Aapp%3Apull" in token_requests[0].path
    assert "service=stub" in token_requests[0].path


def test_a_token_endpoint_that_refuses_is_unknown(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    stub.auth = oci_stub.BEARER
    stub.refuse_tokens = True
    query = by_tag(stub.host, "app")
    outcome = look_up(stub_client, query)[query]
    assert isinstance(outcome, outcomes.Unknown)
    assert "gave no anonymous token" in outcome.message


def test_a_registry_that_wants_basic_credentials_is_unknown(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    stub.auth = oci_stub.BASIC
    query = by_tag(stub.host, "app")
    outcome = look_up(stub_client, query)[query]
    assert isinstance(outcome, outcomes.Unknown)
    assert "requires credentials" in outcome.message


def test_forbidden_is_unknown(stub: oci_stub.OciStub, stub_client: oci.OciClient) -> None:
    stub.queue(oci_stub.Answer(403, b'{"errors":[{"code":"DENIED","message":"no"}]}'))
    query = by_tag(stub.host, "app")
    outcome = look_up(stub_client, query)[query]
    assert isinstance(outcome, outcomes.Unknown)
    assert "HTTP 403 DENIED: no" in outcome.message


def test_every_request_accepts_the_index_and_manifest_types(
    stub: oci_stub.OciStub, stub_client: oci.OciClient
) -> None:
    look_up(stub_client, by_tag(stub.host, "app"))
    accept = stub.received()[0].headers["Accept"]
    assert accept.split(", ") == list(protocol.ACCEPTED_MEDIA_TYPES)


# digestguard resolve


def resolve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", "resolve", *args],
        capture_output=True,
        text=True,
        env=os.environ | (env or {}),
        timeout=60,
        check=False,
    )


def test_resolve_prints_an_image_of_an_oci_registry_pinned(
    registry: oci_registry.Registry,
) -> None:
    name = unique()
    digest = registry.push_image(name, "v1", seed=name)
    image = registry.image(name, "v1")
    result = resolve(image, "--insecure-registries", registry.host)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{image}@{digest}"


def test_resolve_takes_insecure_registries_from_the_environment(
    registry: oci_registry.Registry,
) -> None:
    name = unique()
    digest = registry.push_image(name, "v1", seed=name)
    image = registry.image(name, "v1")
    result = resolve(image, env={"DIGESTGUARD_INSECURE_REGISTRIES": f"other:1,{registry.host}"})
    assert result.stdout.strip() == f"{image}@{digest}", result.stderr


def test_resolve_sends_ecr_images_to_ecr_and_the_others_to_their_registry(
    registry: oci_registry.Registry, moto_server: ecr_emulator.MotoServer
) -> None:
    name = unique()
    oci_digest = registry.push_image(name, "v1", seed=name)
    ecr_digest = ecr_emulator.seed_image(
        ecr_emulator.ecr_client(moto_server.url),
        name,
        "v1",
        ecr_emulator.docker_manifest(seed=f"ecr:{name}"),
        ecr_emulator.DOCKER_MANIFEST,
    )
    ecr_image = f"{ecr_emulator.registry_host()}/{name}:v1"
    result = resolve(
        ecr_image,
        registry.image(name, "v1"),
        "--ecr-endpoint-url",
        moto_server.url,
        "--insecure-registries",
        registry.host,
        env=ecr_emulator.FAKE_CREDENTIALS | {"AWS_DEFAULT_REGION": ecr_emulator.REGION},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{ecr_image}@{ecr_digest}",
        f"{registry.image(name, 'v1')}@{oci_digest}",
    ]


def test_resolve_exits_1_for_a_missing_tag_of_an_oci_registry(
    registry: oci_registry.Registry,
) -> None:
    image = registry.image(unique(), "nope")
    result = resolve(image, "--insecure-registries", registry.host)
    assert result.returncode == 1
    assert f"{image}: not found (MANIFEST_UNKNOWN" in result.stderr


def test_a_refused_connection_is_tried_twice_not_until_the_budget_is_spent() -> None:
    holder, port = ports.refusing_port()
    host = f"127.0.0.1:{port}"
    the_client = oci.OciClient(insecure_registries=[host])
    # A tag is asked with a HEAD first: that is the call tried twice.
    with holder:
        before = metrics.REGISTRY_CALLS.labels(oci.HEAD_MANIFEST, "error")._value.get()
        with pytest.raises(errors.RegistryError, match="refused 2 times"):
            the_client.lookup(outcomes.Repository(host, "app"), [by_tag(host, "app")], timeout=30.0)
        after = metrics.REGISTRY_CALLS.labels(oci.HEAD_MANIFEST, "error")._value.get()
    the_client.close()
    assert after - before == 2


# Connections to an HTTPS registry


class _CountingForwarder:
    """A TCP forwarder to `target_port` on loopback that counts the connections it is
    given: each is one TCP connect and one TLS handshake of the client."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.accepted = 0
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                incoming, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            outgoing = socket.create_connection(("127.0.0.1", self._target_port))
            for source, sink in ((incoming, outgoing), (outgoing, incoming)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def test_lookups_of_an_https_registry_share_one_kept_alive_tls_connection(
    secured_registry: oci_registry.Registry,
) -> None:
    name = unique()
    for tag in ("v1", "v2", "v3"):
        secured_registry.push_image(name, tag, seed=f"{name}:{tag}")
    port = int(secured_registry.host.rpartition(":")[2])
    forwarder = _CountingForwarder(port)
    host = f"{oci_registry.HOST}:{forwarder.port}"
    the_client = oci.OciClient(ca_file=str(secured_registry.ca_file))
    try:
        for _ in range(10):
            for tag in ("v1", "v2", "v3"):
                (answer,) = look_up(the_client, by_tag(host, name, tag)).values()
                assert isinstance(answer, outcomes.Found), answer
    finally:
        the_client.close()
        forwarder.close()
    # 30 lookups, one TCP connection and so one TLS handshake with the registry.
    assert forwarder.accepted == 1
