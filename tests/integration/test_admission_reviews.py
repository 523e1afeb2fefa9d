"""AdmissionReviews captured from a real kube-apiserver, replayed against the real process.

The golden files in tests/golden were written by hack/capture_reviews.py. Each is
POSTed over HTTPS to the path the chart routes it to, at a `digestguard serve`
process that watches the session's control plane (for its DigestPolicies) and
resolves against the moto ECR server. The response is checked whole, and its JSON
patch is applied to the object as the apiserver would apply it.
"""

from __future__ import annotations

import base64
import copy
import json
import signal
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from kubernetes import client

from tests.support import cluster, ecr_emulator
from tests.support.controlplane import ControlPlane
from tests.support.webhook_process import WebhookProcess
from webhook import names
from webhook.serving import reviews

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
REGISTRY = ecr_emulator.registry_host()
GOLDEN_NAMESPACE = "golden"
# Every image the golden reviews reference in ECR, and the digest tests will find.
IMAGES = (("migrate", "v1"), ("app", "v1"), ("app", "v2"), ("debug", "v1"), ("api", "v1"))
IMAGES += (("report", "v1"),)


class Replay:
    """The webhook under test, the images it will find, and how to reach it."""

    def __init__(self, process: WebhookProcess, prefix: str, digests: dict[str, str]) -> None:
        self.process = process
        self.prefix = prefix
        self.digests = digests
        self.context = ssl.create_default_context(cafile=str(process.cafile))

    def image(self, repository: str, tag: str) -> str:
        return f"{REGISTRY}/{self.prefix}/{repository}:{tag}"

    def pinned(self, repository: str, tag: str) -> str:
        return f"{self.image(repository, tag)}@{self.digests[f'{repository}:{tag}']}"

    def golden(self, name: str) -> dict[str, Any]:
        """A golden review, its ECR images moved to this module's seeded repositories."""
        text = (GOLDEN / f"{name}.json").read_text()
        review: dict[str, Any] = json.loads(
            text.replace(f'"{REGISTRY}/golden/', f'"{REGISTRY}/{self.prefix}/')
        )
        return review

    def post(self, path: str, body: bytes | dict[str, Any]) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            self.process.base_url + path,
            data=data,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read())

    def alive(self) -> bool:
        process = self.process.process
        if process is None or process.poll() is not None:
            return False
        url = f"http://127.0.0.1:{self.process.health_port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)


@pytest.fixture(scope="module")
def replay(
    control_plane: ControlPlane,
    moto_server: ecr_emulator.MotoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Replay]:
    prefix = f"golden-{uuid.uuid4().hex[:8]}"
    ecr = ecr_emulator.ecr_client(moto_server.url)
    digests = {
        f"{repository}:{tag}": ecr_emulator.seed_image(
            ecr,
            f"{prefix}/{repository}",
            tag,
            ecr_emulator.docker_manifest(seed=f"{prefix}/{repository}:{tag}"),
            ecr_emulator.DOCKER_MANIFEST,
        )
        for repository, tag in IMAGES
    }
    workdir = tmp_path_factory.mktemp("replay")
    tls = cluster.loopback_tls(workdir / "tls")
    with control_plane.new_api_client() as api:
        cluster.install_crd(api)
        if not cluster.call(client.CoreV1Api(api).read_namespace, GOLDEN_NAMESPACE).ok:
            cluster.create_namespace(api, GOLDEN_NAMESPACE)
        # Created before the process starts: it is indexed when the process is ready.
        policy = cluster.create_policy(
            api,
            prefix,
            {
                "namespaceSelector": cluster.only_in(GOLDEN_NAMESPACE),
                "images": ["*.dkr.ecr.*.amazonaws.com/**"],
                "action": "Mutate",
            },
        )
        assert policy.ok, policy.message
        process = WebhookProcess(
            kubeconfig=control_plane.kubeconfig_path,
            namespace="digestguard",
            workdir=workdir,
            ecr_endpoint_url=moto_server.url,
            certfile=tls.cert_file,
            keyfile=tls.key_file,
            cafile=tls.ca_file,
        )
        try:
            with process:
                yield Replay(process, prefix, digests)
        finally:
            cluster.delete_policy(api, prefix)
            cluster.delete_namespace(api, GOLDEN_NAMESPACE)


@pytest.fixture(autouse=True)
def _stays_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a test sends, the process is still up and healthy afterwards."""
    yield
    if "replay" in request.fixturenames:
        the_replay: Replay = request.getfixturevalue("replay")
        assert the_replay.alive(), the_replay.process.log_tail()


def patched(review: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The object the apiserver would store: the request's object with the patch applied."""
    operations = json.loads(base64.b64decode(answer["response"]["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(review["request"]["object"], operations)
    return result


def patch_paths(answer: dict[str, Any]) -> set[str]:
    return {op["path"] for op in json.loads(base64.b64decode(answer["response"]["patch"]))}


def assert_allowed_untouched(review: dict[str, Any], status: int, answer: dict[str, Any]) -> None:
    assert status == 200
    assert answer == {
        "apiVersion": reviews.API_VERSION,
        "kind": reviews.KIND,
        "response": {"uid": review["request"]["uid"], "allowed": True},
    }


def with_annotation(obj: dict[str, Any], originals: dict[str, str]) -> dict[str, Any]:
    annotations = obj["metadata"].setdefault("annotations", {})
    annotations[names.ANNOTATION_ORIGINAL_IMAGES] = json.dumps(
        originals, sort_keys=True, separators=(",", ":")
    )
    return obj


# --------------------------------------------------------------------------
# The captured reviews
# --------------------------------------------------------------------------


def test_a_created_pod_has_its_ecr_images_pinned_and_the_originals_recorded(
    replay: Replay,
) -> None:
    review = replay.golden("pod-create")

    status, answer = replay.post(f"/{names.MUTATE_PODS}", review)

    assert status == 200
    assert answer["apiVersion"] == reviews.API_VERSION
    assert answer["kind"] == reviews.KIND
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert not response.get("warnings")
    assert "status" not in response
    expected = copy.deepcopy(review["request"]["object"])
    expected["spec"]["initContainers"][0]["image"] = replay.pinned("migrate", "v1")
    expected["spec"]["containers"][0]["image"] = replay.pinned("app", "v1")
    with_annotation(
        expected,
        {
            "containers/app": replay.image("app", "v1"),
            "initContainers/migrate": replay.image("migrate", "v1"),
        },
    )
    assert patched(review, answer) == expected
    assert expected["spec"]["containers"][1]["image"] == "nginx:1.27", "outside the policy"


def test_a_pinned_pod_is_not_changed_again_when_the_webhook_is_reinvoked(replay: Replay) -> None:
    review = replay.golden("pod-create")
    _, first = replay.post(f"/{names.MUTATE_PODS}", review)
    review["request"]["object"] = patched(review, first)

    status, again = replay.post(f"/{names.MUTATE_PODS}", review)

    assert_allowed_untouched(review, status, again)


def test_the_validating_webhook_admits_the_pod_the_mutating_one_pinned(replay: Replay) -> None:
    review = replay.golden("pod-create")
    _, mutated = replay.post(f"/{names.MUTATE_PODS}", review)
    validated = copy.deepcopy(review)
    validated["request"]["object"] = patched(review, mutated)
    status, answer = replay.post(f"/{names.VALIDATE_PODS}", validated)
    assert_allowed_untouched(validated, status, answer)


def test_the_validating_webhook_denies_a_pod_the_mutating_one_never_saw(replay: Replay) -> None:
    # Tag-only under a Mutate policy at validation: the mutating webhook did not run.
    review = replay.golden("pod-create")
    status, answer = replay.post(f"/{names.VALIDATE_PODS}", review)
    assert status == 200
    assert answer["response"]["allowed"] is False
    assert names.REASON_TAG_NOT_PINNED in answer["response"]["status"]["message"]


def test_an_update_pins_only_the_container_whose_image_changed(replay: Replay) -> None:
    review = replay.golden("pod-update")
    old, new = review["request"]["oldObject"], review["request"]["object"]
    assert old["spec"]["containers"][0]["image"] == replay.image("app", "v1")
    assert new["spec"]["containers"][0]["image"] == replay.image("app", "v2")

    status, answer = replay.post(f"/{names.MUTATE_PODS}", review)

    assert status == 200
    assert answer["response"]["uid"] == review["request"]["uid"]
    assert answer["response"]["allowed"] is True
    assert not answer["response"].get("warnings")
    expected = copy.deepcopy(new)
    expected["spec"]["containers"][0]["image"] = replay.pinned("app", "v2")
    with_annotation(expected, {"containers/app": replay.image("app", "v2")})
    assert patched(review, answer) == expected
    assert "/spec/initContainers/0/image" not in patch_paths(answer), "unchanged: left alone"


def test_an_ephemeral_container_review_pins_only_the_new_ephemeral_container(
    replay: Replay,
) -> None:
    review = replay.golden("pod-ephemeralcontainers")
    assert review["request"]["subResource"] == "ephemeralcontainers"

    status, answer = replay.post(f"/{names.MUTATE_EPHEMERAL}", review)

    assert status == 200
    assert answer["response"]["uid"] == review["request"]["uid"]
    assert answer["response"]["allowed"] is True
    result = patched(review, answer)
    assert cluster.images_of(result, "ephemeralContainers") == {
        "debugger": replay.pinned("debug", "v1")
    }
    # The app container's v2 is the running image (oldObject has it too): not examined.
    assert cluster.images_of(result) == cluster.images_of(review["request"]["object"])
    assert cluster.images_of(result, "initContainers") == {"migrate": replay.image("migrate", "v1")}
    image_paths = {p for p in patch_paths(answer) if p.endswith("/image")}
    assert image_paths == {"/spec/ephemeralContainers/0/image"}


def test_the_validating_webhook_allows_an_ephemeral_container_the_mutating_one_pinned(
    replay: Replay,
) -> None:
    review = replay.golden("pod-ephemeralcontainers")
    _, mutated = replay.post(f"/{names.MUTATE_EPHEMERAL}", review)
    validated = copy.deepcopy(review)
    validated["request"]["object"] = patched(review, mutated)
    status, answer = replay.post(f"/{names.VALIDATE_EPHEMERAL}", validated)
    assert_allowed_untouched(validated, status, answer)


def test_a_pod_made_by_a_replicaset_is_pinned(replay: Replay) -> None:
    review = replay.golden("pod-create-from-replicaset")
    assert review["request"]["object"]["metadata"].get("generateName")

    status, answer = replay.post(f"/{names.MUTATE_PODS}", review)

    assert status == 200
    assert answer["response"]["uid"] == review["request"]["uid"]
    expected = copy.deepcopy(review["request"]["object"])
    expected["spec"]["containers"][0]["image"] = replay.pinned("api", "v1")
    with_annotation(expected, {"containers/api": replay.image("api", "v1")})
    assert patched(review, answer) == expected


@pytest.mark.parametrize(
    ("golden", "handler"),
    [
        ("deployment-create", "validate-deployments"),
        ("cronjob-create", "validate-cronjobs"),
    ],
)
def test_a_workload_whose_images_exist_is_allowed_and_its_template_left_alone(
    replay: Replay, golden: str, handler: str
) -> None:
    review = replay.golden(golden)
    status, answer = replay.post(f"/{handler}", review)
    assert_allowed_untouched(review, status, answer)


@pytest.mark.parametrize(
    ("golden", "handler", "container"),
    [
        ("deployment-create", "validate-deployments", "api"),
        ("cronjob-create", "validate-cronjobs", "report"),
    ],
)
def test_a_workload_with_a_missing_image_is_denied_naming_container_image_and_policy(
    replay: Replay, golden: str, handler: str, container: str
) -> None:
    missing = replay.image(container, "v404")
    review = json.loads(
        json.dumps(replay.golden(golden)).replace(replay.image(container, "v1"), missing)
    )

    status, answer = replay.post(f"/{handler}", review)

    assert status == 200
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    message = response["status"]["message"]
    assert f"containers[{container}]" in message
    assert repr(missing) in message
    assert names.REASON_IMAGE_MISSING in message
    assert f"DigestPolicy {replay.prefix}, action Mutate" in message
    assert "patch" not in response


def test_a_missing_image_in_a_pod_is_denied_and_nothing_is_patched(replay: Replay) -> None:
    review = replay.golden("pod-create")
    review["request"]["object"]["spec"]["containers"][0]["image"] = replay.image("app", "v404")

    status, answer = replay.post(f"/{names.MUTATE_PODS}", review)

    assert status == 200
    assert answer["response"]["allowed"] is False
    assert "containers[app]" in answer["response"]["status"]["message"]
    assert "initContainers[migrate]" not in answer["response"]["status"]["message"]
    assert "patch" not in answer["response"]


def test_an_ecr_image_spelled_with_port_443_is_denied_under_enforce_like_every_spelling(
    replay: Replay, control_plane: ControlPlane
) -> None:
    enforce = f"{replay.prefix}-enforce"
    review = replay.golden("pod-create")
    obj = review["request"]["object"]
    obj["metadata"]["labels"]["spelling"] = enforce
    spelled = replay.image("app", "v1").replace(f"{REGISTRY}/", f"{REGISTRY}:443/", 1)
    obj["spec"]["containers"][0]["image"] = spelled
    spec = {
        "namespaceSelector": cluster.only_in(GOLDEN_NAMESPACE),
        "podSelector": {"matchLabels": {"spelling": enforce}},
        "images": ["*.dkr.ecr.*.amazonaws.com/**"],
        "action": "Enforce",
    }

    with control_plane.new_api_client() as api, cluster.policies(api, {enforce: spec}):
        status, answer = replay.post(f"/{names.VALIDATE_PODS}", review)

    assert status == 200
    assert answer["response"]["allowed"] is False
    message = answer["response"]["status"]["message"]
    assert f"containers[app]: image {spelled!r} (repository {replay.prefix}/app" in message
    assert f"in registry {REGISTRY}," in message
    assert names.REASON_TAG_NOT_PINNED in message
    assert f"DigestPolicy {enforce}, action Enforce" in message


def test_a_review_sent_to_the_path_of_another_resource_is_refused(replay: Replay) -> None:
    review = replay.golden("pod-create")
    status, answer = replay.post("/validate-deployments", review)
    assert status == 200
    assert answer["response"]["uid"] == review["request"]["uid"]
    assert answer["response"]["allowed"] is False
    assert "routes this resource to the wrong path" in answer["response"]["status"]["message"]


def test_a_dry_run_review_is_decided_the_same_way(replay: Replay) -> None:
    review = replay.golden("pod-create")
    _, real = replay.post(f"/{names.MUTATE_PODS}", review)
    review["request"]["dryRun"] = True
    _, dry = replay.post(f"/{names.MUTATE_PODS}", review)
    assert dry == real


# --------------------------------------------------------------------------
# Bad input: a well-formed answer each time, and the process stays up
# --------------------------------------------------------------------------


def test_an_unknown_path_is_refused_with_404(replay: Replay) -> None:
    status, answer = replay.post("/mutate", replay.golden("pod-create"))
    assert status == 404
    assert answer["kind"] == reviews.KIND
    assert answer["response"]["allowed"] is False


@pytest.mark.parametrize(
    "body", [b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"kind": "AdmissionReview"'], ids=repr
)
def test_a_body_that_is_not_an_admission_review_gets_a_400_refusal(
    replay: Replay, body: bytes
) -> None:
    status, answer = replay.post(f"/{names.MUTATE_PODS}", body)
    assert status == 400
    assert answer["apiVersion"] == reviews.API_VERSION
    assert answer["kind"] == reviews.KIND
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 400


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda r: r.update(kind="ConversionReview"), "kind must be 'AdmissionReview'"),
        (lambda r: r.update(apiVersion="admission.k8s.io/v1beta1"), "apiVersion must be"),
        (lambda r: r.pop("request"), "request must be an object"),
        (lambda r: r["request"].pop("uid"), "request.uid"),
        (lambda r: r["request"].pop("resource"), "request.resource"),
        (lambda r: r["request"].pop("userInfo"), "request.userInfo"),
        (lambda r: r["request"].pop("object"), "request.object is required for CREATE"),
        (lambda r: r["request"].update(operation="PATCH"), "request.operation"),
        (lambda r: r["request"].update(object=["not", "a", "pod"]), "request.object must be"),
    ],
    ids=[
        "kind",
        "apiVersion",
        "no-request",
        "no-uid",
        "no-resource",
        "no-userInfo",
        "no-object",
        "operation",
        "object-type",
    ],
)
def test_a_malformed_review_is_refused_naming_what_is_wrong(
    replay: Replay, change: Any, named: str
) -> None:
    review = replay.golden("pod-create")
    uid = review["request"]["uid"]
    change(review)

    status, answer = replay.post(f"/{names.MUTATE_PODS}", review)

    assert status == 400
    assert answer["kind"] == reviews.KIND
    assert answer["response"]["allowed"] is False
    assert named in answer["response"]["status"]["message"]
    assert answer["response"]["uid"] in ("", uid)


@pytest.mark.parametrize(
    "image",
    [
        "UPPER/Case:v1",
        f"{REGISTRY}/golden/app:" + "t" * 200,
        "a" * 5000,
        "x" * 100_000 + "@@@",
        "app@sha256:short",
        "\u00efmage:\u00fc",
        "nul\x00byte:v1",
        ":::",
        f"{REGISTRY}/golden/app:v1@sha256:" + "g" * 64,
    ],
    ids=[
        "uppercase",
        "long-tag",
        "long-name",
        "huge",
        "short-digest",
        "unicode",
        "nul",
        "colons",
        "bad-hex",
    ],
)
def test_an_absurd_image_string_is_denied_as_an_invalid_reference(
    replay: Replay, image: str
) -> None:
    review = replay.golden("pod-create")
    review["request"]["object"]["spec"]["containers"][0]["image"] = image

    status, answer = replay.post(f"/{names.MUTATE_PODS}", review)

    assert status == 200
    assert answer["response"]["uid"] == review["request"]["uid"]
    assert answer["response"]["allowed"] is False
    message = answer["response"]["status"]["message"]
    assert "containers[app]" in message
    assert names.REASON_INVALID_REFERENCE in message


def test_a_10_mib_pod_is_answered_in_full(replay: Replay) -> None:
    review = replay.golden("pod-create")
    review["request"]["object"]["metadata"]["annotations"] = {"bulk": "x" * (10 * 1024 * 1024)}
    body = json.dumps(review).encode()
    assert len(body) > 10 * 1024 * 1024

    status, answer = replay.post(f"/{names.MUTATE_PODS}", body)

    assert status == 200
    assert answer["response"]["allowed"] is True
    result = patched(review, answer)
    assert result["spec"]["containers"][0]["image"] == replay.pinned("app", "v1")
    assert (
        result["metadata"]["annotations"]["bulk"]
        == review["request"]["object"]["metadata"]["annotations"]["bulk"]
    )


# --------------------------------------------------------------------------
# Shutting down
# --------------------------------------------------------------------------


def test_after_sigterm_the_webhook_is_not_ready_but_answers_until_its_shutdown_delay_ends(
    replay: Replay, control_plane: ControlPlane, moto_server: Any, tmp_path: Path
) -> None:
    tls = cluster.loopback_tls(tmp_path / "tls")
    process = WebhookProcess(
        kubeconfig=control_plane.kubeconfig_path,
        namespace="digestguard",
        workdir=tmp_path,
        ecr_endpoint_url=moto_server.url,
        certfile=tls.cert_file,
        keyfile=tls.key_file,
        cafile=tls.ca_file,
        extra_args=["--shutdown-delay", "3s"],
    )
    with process:
        draining = Replay(process, replay.prefix, replay.digests)
        review = draining.golden("pod-create")
        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)
        cluster.eventually("the webhook to report not ready", lambda: not process.ready(), 2)

        status, answer = draining.post(f"/{names.MUTATE_PODS}", review)

        assert status == 200
        assert patched(review, answer)["spec"]["containers"][0]["image"] == replay.pinned(
            "app", "v1"
        )
        assert process.process.wait(15) == 0
    assert '"SIGTERM: not ready; draining"' in process.log_path.read_text()
