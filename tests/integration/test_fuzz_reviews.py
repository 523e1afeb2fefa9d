"""Whatever is POSTed to it, the running webhook answers cleanly and stays up.

Hypothesis generates AdmissionReview bodies (well-formed and broken), pod specs and
image strings, and POSTs them over HTTPS to a `digestguard serve` process that
watches the session's control plane and resolves against the ECR-protocol stub
(which answers any tag, except a few it reports missing or throttles). Every
answer must be a valid AdmissionReview (with a JSON patch that applies to the
object) or a clean HTTP 4xx with a JSON body: never a 5xx, a traceback or a hang,
and the process must still be alive afterwards.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import string
import uuid
from collections.abc import Iterator
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kubernetes import client

from tests.support import cluster, ecr_stub
from tests.support.controlplane import ControlPlane
from tests.support.webhook_process import WebhookProcess
from webhook import names

NAMESPACE = "fuzz"
OWN_NAMESPACE = "digestguard"
ANSWER_WITHIN = 30.0
"""Client timeout: far above the webhook's own answer-by time (deadline 2 s + 1 s)."""
MISSING_TAG = "gone"
THROTTLED_TAG = "busy"

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Webhook:
    """The process under test and one keep-alive HTTPS connection to it."""

    def __init__(self, process: WebhookProcess) -> None:
        self.process = process
        self._context = ssl.create_default_context(cafile=str(process.cafile))
        self._connection: http.client.HTTPSConnection | None = None

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):
            connection = self._connect()
            try:
                connection.request(
                    "POST", path, body=body, headers={"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.RemoteDisconnected):
                # The server may close a keep-alive connection after a refusal; once more.
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def alive(self) -> bool:
        popen = self.process.process
        return popen is not None and popen.poll() is None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> http.client.HTTPSConnection:
        if self._connection is None:
            self._connection = http.client.HTTPSConnection(
                "127.0.0.1", self.process.port, context=self._context, timeout=ANSWER_WITHIN
            )
        return self._connection


@pytest.fixture(scope="module")
def webhook(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Webhook]:
    workdir = tmp_path_factory.mktemp("fuzz")
    tls = cluster.loopback_tls(workdir / "tls")
    prefix = f"fuzz-{uuid.uuid4().hex[:6]}"
    with ecr_stub.EcrStub() as stub, control_plane.new_api_client() as api:
        stub.configure(
            synthesize=True,
            failures={MISSING_TAG: "ImageNotFound", THROTTLED_TAG: "UpstreamTooManyRequests"},
            repositories={"locked/app": {"imageTagMutability": "IMMUTABLE"}},
        )
        cluster.install_crd(api)
        for namespace in (NAMESPACE, OWN_NAMESPACE):
            if not cluster.call(client.CoreV1Api(api).read_namespace, namespace).ok:
                cluster.create_namespace(api, namespace)
        ecr = ["*.dkr.ecr.*.amazonaws.com/**", "*.dkr.ecr-fips.*.amazonaws.com/**"]
        policies = {
            f"{prefix}-mutate": {"images": ecr, "action": "Mutate", "maxStale": "1m"},
            f"{prefix}-enforce": {
                "images": ["*.dkr.ecr.*.amazonaws.com/locked/**"],
                "action": "Enforce",
                "allowImmutableTags": True,
                "onResolveError": "Allow",
            },
            f"{prefix}-audit": {"images": ecr, "action": "Audit"},
        }
        for name, spec in policies.items():
            created = cluster.create_policy(api, name, spec)
            assert created.ok, created.message
        process = WebhookProcess(
            kubeconfig=control_plane.kubeconfig_path,
            namespace=OWN_NAMESPACE,
            workdir=workdir,
            ecr_endpoint_url=stub.url,
            certfile=tls.cert_file,
            keyfile=tls.key_file,
            cafile=tls.ca_file,
            extra_args=["--resolve-deadline", "2s", "--log-level", "info"],
        )
        try:
            with process:
                the_webhook = Webhook(process)
                yield the_webhook
                the_webhook.close()
                assert the_webhook.alive(), process.log_tail()
                assert process.ready(), process.log_tail()
        finally:
            for name in policies:
                cluster.delete_policy(api, name)


# --------------------------------------------------------------------------
# What is sent
# --------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=12,
)

_lower_digits = string.ascii_lowercase + string.digits
accounts = st.sampled_from(["123456789012", "111122223333", "000000000000"])
regions = st.sampled_from(
    ["us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1", "us-iso-east-1"]
)
repository_names = st.lists(
    st.text(alphabet=_lower_digits, min_size=1, max_size=8), min_size=1, max_size=3
).map("/".join) | st.sampled_from(["locked/app", "team/api", "a"])
tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True) | st.sampled_from(
    [MISSING_TAG, THROTTLED_TAG, "latest", "v1"]
)
digests = st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True) | st.sampled_from(
    ["sha256:abc", "sha512:" + "0" * 128, "md5:" + "0" * 32]
)


@st.composite
def ecr_hosts(draw: st.DrawFn) -> str:
    account, region = draw(accounts), draw(regions)
    flavour = draw(st.sampled_from(["dkr.ecr", "dkr.ecr-fips", "dkr-ecr"]))
    suffix = {"cn-north-1": "amazonaws.com.cn", "us-iso-east-1": "c2s.ic.gov"}.get(
        region, "amazonaws.com"
    )
    if flavour == "dkr-ecr":
        suffix = "on.aws"
    return f"{account}.{flavour}.{region}.{suffix}"


@st.composite
def ecr_images(draw: st.DrawFn) -> str:
    reference = f"{draw(ecr_hosts())}/{draw(repository_names)}"
    # Mostly tags (the stub finds every tag); a digest it does not know is missing.
    tag = draw(st.none() | tags)
    digest = draw(digests) if draw(st.integers(min_value=0, max_value=4)) == 0 else None
    if tag is not None:
        reference += f":{tag}"
    if digest is not None:
        reference += f"@{digest}"
    return reference


@st.composite
def damaged(draw: st.DrawFn, images: st.SearchStrategy[str]) -> str:
    """A reference with one character inserted, removed or replaced, or changed case."""
    image = draw(images)
    position = draw(st.integers(min_value=0, max_value=len(image)))
    how = draw(st.sampled_from(["insert", "delete", "replace", "upper", "space"]))
    char = draw(st.sampled_from([*":@/._-+ \t\n%#?\\\x00é€", "::", "@@", "//"]))
    if how == "insert":
        return image[:position] + char + image[position:]
    if how == "delete":
        return image[:position] + image[position + 1 :]
    if how == "replace":
        return image[:position] + char + image[position + 1 :]
    if how == "upper":
        return image.upper()
    return f" {image} "


image_strings = st.one_of(
    ecr_images(),
    ecr_images(),
    ecr_images(),
    damaged(ecr_images()),
    st.sampled_from(
        [
            "nginx",
            "nginx:1.27",
            "docker.io/library/busybox@sha256:" + "1" * 64,
            "public.ecr.aws/docker/library/alpine:3",
            "localhost:5000/a/b:c",
            "",
            ":",
            "@",
            "a" * 300,
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/" + "x/" * 100 + "y",
        ]
    ),
    st.text(max_size=80),
)


def containers(images: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    container = st.fixed_dictionaries(
        {"name": st.text(max_size=20) | st.sampled_from(["app", "sidecar"]), "image": images},
        optional={"imagePullPolicy": st.sampled_from(["Always", "IfNotPresent"])},
    )
    return st.lists(container | json_values, max_size=4) | json_values


@st.composite
def pods(draw: st.DrawFn, namespace: str | None = None) -> dict[str, Any]:
    images: st.SearchStrategy[Any] = image_strings | json_scalars
    spec: dict[str, Any] = {"containers": draw(containers(images))}
    for field in ("initContainers", "ephemeralContainers"):
        if draw(st.booleans()):
            spec[field] = draw(containers(images))
    metadata: dict[str, Any] = {"name": draw(st.text(min_size=1, max_size=20))}
    if namespace is not None:
        metadata["namespace"] = namespace
    if draw(st.booleans()):
        metadata["annotations"] = draw(
            st.dictionaries(st.text(max_size=30), st.text(max_size=30), max_size=3)
            | st.just({names.ANNOTATION_ORIGINAL_IMAGES: "{not json"})
        )
    if draw(st.booleans()):
        metadata["labels"] = draw(st.dictionaries(st.text(max_size=10), json_scalars, max_size=3))
    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        pod[draw(st.sampled_from(["metadata", "spec"]))] = draw(json_values)
    return pod


WORKLOADS = {handler: (group, plural) for handler, group, _, plural in names.WORKLOADS}


@st.composite
def reviews(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """(path, AdmissionReview): mostly well-formed, sometimes misrouted or damaged."""
    path = draw(st.sampled_from([*names.ALL_HANDLERS, names.MUTATE_PODS, names.VALIDATE_PODS]))
    if draw(st.integers(min_value=0, max_value=9)) == 0:  # a path no handler has
        path = draw(
            st.sampled_from(["", "nope", "mutate-pods/extra"])
            | st.text(alphabet=string.ascii_letters + "-/", max_size=20)
        )
    namespace = draw(st.sampled_from([NAMESPACE, OWN_NAMESPACE, "default", "not-there"]))
    obj: dict[str, Any] = draw(pods(namespace=draw(st.sampled_from([namespace, None]))))
    group, plural = "", "pods"
    if path in WORKLOADS:
        group, plural = WORKLOADS[path]
        template = {"metadata": {"labels": {"app": "x"}}, "spec": obj["spec"]}
        obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": obj["metadata"]}
        if plural == "cronjobs":
            obj["spec"] = {"jobTemplate": {"spec": {"template": template}}}
        else:
            obj["spec"] = {"template": template}
    operation = draw(
        st.sampled_from(["CREATE", "CREATE", "UPDATE", "UPDATE", "DELETE", "CONNECT", "create", ""])
    )
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": group, "version": "v1", "kind": "Pod"},
        "resource": {"group": group, "version": "v1", "resource": plural},
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": "fuzzer"},
        "object": obj,
        "oldObject": draw(st.none() | pods(namespace=namespace)) if operation != "CREATE" else None,
        "dryRun": draw(st.booleans()),
    }
    if "ephemeral" in path or draw(st.integers(min_value=0, max_value=9)) == 0:
        request["subResource"] = draw(st.sampled_from(["ephemeralcontainers", "status", ""]))
    review: dict[str, Any] = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": request,
    }
    # Now and then, damage the envelope: drop or replace one field at some level.
    damage = draw(st.integers(min_value=0, max_value=3))
    if damage == 1:
        target = draw(st.sampled_from([review, request]))
        key = draw(st.sampled_from(sorted(target)))
        if draw(st.booleans()):
            del target[key]
        else:
            target[key] = draw(json_values)
    elif damage == 2:
        review["apiVersion"] = draw(st.sampled_from(["admission.k8s.io/v1beta1", "v1", ""]))
    return "/" + path, review


bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.sampled_from(
        [
            b"",
            b"{",
            b"null",
            b'{"kind": "AdmissionReview"}',
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": null}',
            b"\xff\xfe\x00{}",
            b'{"a": ' * 200 + b"1" + b"}" * 200,
            json.dumps({"x": "y" * 100_000}).encode(),
        ]
    ),
)


# --------------------------------------------------------------------------
# What must come back
# --------------------------------------------------------------------------


def assert_clean(status: int, raw: bytes, sent: Any) -> None:
    """A valid AdmissionReview (200) or a clean client error (4xx), both JSON."""
    assert status < 500, f"HTTP {status}: {raw[:500]!r}"
    assert b"Traceback" not in raw, raw[:2000]
    answer = json.loads(raw)
    assert isinstance(answer, dict), answer
    if status != 200:
        assert 400 <= status < 500, (status, answer)
        event(f"HTTP {status}")
        return
    assert answer.get("apiVersion") == "admission.k8s.io/v1", answer
    assert answer.get("kind") == "AdmissionReview", answer
    response = answer["response"]
    assert isinstance(response["allowed"], bool), response
    assert isinstance(response["uid"], str), response
    request = sent.get("request") if isinstance(sent, dict) else None
    if isinstance(request, dict) and isinstance(request.get("uid"), str):
        assert response["uid"] == request["uid"], response
    if "status" in response:
        assert isinstance(response["status"].get("code", 0), int), response
        assert isinstance(response["status"].get("message", ""), str), response
    for warning in response.get("warnings", []):
        assert isinstance(warning, str), response
    event(
        "200: "
        + ("patched" if "patch" in response else "allowed" if response["allowed"] else "denied")
        + (" with warnings" if response.get("warnings") else "")
    )
    if "patch" in response:
        assert response["allowed"] is True, response
        assert response.get("patchType") == "JSONPatch", response
        operations = json.loads(base64.b64decode(response["patch"]))
        assert isinstance(operations, list), response
        assert operations, response
        assert isinstance(request, dict)
        # The apiserver applies it to the object it sent: it must apply.
        jsonpatch.apply_patch(request["object"], operations)


@FUZZ
@given(case=reviews())
def test_any_admission_review_gets_a_valid_review_or_a_clean_refusal(
    webhook: Webhook, case: tuple[str, dict[str, Any]]
) -> None:
    path, review = case
    status, raw = webhook.post(path, json.dumps(review).encode())
    assert_clean(status, raw, review)
    assert webhook.alive(), webhook.process.log_tail()


@FUZZ
@given(images=st.lists(image_strings, min_size=1, max_size=5))
def test_any_image_string_in_a_created_pod_gets_a_valid_review(
    webhook: Webhook, images: list[str]
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": NAMESPACE},
        "spec": {
            "containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]
        },
    }
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": NAMESPACE,
            "operation": "CREATE",
            "userInfo": {"username": "fuzzer"},
            "object": pod,
        },
    }
    for handler in (names.MUTATE_PODS, names.VALIDATE_PODS):
        status, raw = webhook.post(f"/{handler}", json.dumps(review).encode())
        assert status == 200, raw[:500]
        assert_clean(status, raw, review)
    assert webhook.alive(), webhook.process.log_tail()


@settings(FUZZ, max_examples=100)
@given(path=st.sampled_from([f"/{names.MUTATE_PODS}", f"/{names.VALIDATE_PODS}"]), body=bodies)
def test_any_body_gets_a_clean_answer(webhook: Webhook, path: str, body: bytes) -> None:
    status, raw = webhook.post(path, body)
    assert_clean(status, raw, None)
    assert webhook.alive(), webhook.process.log_tail()
