"""The webhook under registry trouble, long streams of updates and shutdown.

Each test runs a `digestguard serve` process (or, for kopf's memories, the real
kopf operator in-process) against the session's control plane, which it watches
for DigestPolicies, and the ECR-protocol stub, told to throttle, fail or be slow.
Call counts and memory bounds are asserted; timings never are.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import http.client
import json
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kopf._core.reactor import inventory
from kubernetes import client
from kubernetes.config import kube_config

from tests.support import cluster, ecr_emulator, ecr_stub, oci_stub
from tests.support.controlplane import ControlPlane
from tests.support.webhook_process import WebhookProcess
from webhook import names
from webhook.core import outcomes, policies, references
from webhook.registries import resolver
from webhook.serving import admission, kubeapi, server

STRICT = "resilience-strict"
"""Pods here fall under a Mutate policy with onResolveError: Deny and maxStale: 5s."""
LENIENT = "resilience-lenient"
"""Pods here fall under a Mutate policy with onResolveError: Allow."""
OWN_NAMESPACE = "digestguard"
REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
MAX_STALE_SECONDS = 5.0


class Env:
    """What every test shares: the control plane, the stub, certificates, the policies."""

    def __init__(self, control_plane: ControlPlane, stub: ecr_stub.EcrStub, workdir: Path) -> None:
        self.control_plane = control_plane
        self.stub = stub
        self.workdir = workdir
        self.tls = cluster.loopback_tls(workdir / "tls")

    @contextlib.contextmanager
    def webhook(self, *args: str) -> Iterator[WebhookProcess]:
        process = WebhookProcess(
            kubeconfig=self.control_plane.kubeconfig_path,
            namespace=OWN_NAMESPACE,
            workdir=self.workdir,
            ecr_endpoint_url=self.stub.url,
            certfile=self.tls.cert_file,
            keyfile=self.tls.key_file,
            cafile=self.tls.ca_file,
            extra_args=["--log-level", "info", *args],
        )
        with process:
            yield process


@pytest.fixture(scope="module")
def env(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    prefix = f"resilience-{uuid.uuid4().hex[:6]}"
    images = ["*.dkr.ecr.*.amazonaws.com/**"]
    policies = {
        f"{prefix}-strict": {
            "namespaceSelector": cluster.only_in(STRICT),
            "images": images,
            "action": "Mutate",
            "onResolveError": "Deny",
            "maxStale": f"{MAX_STALE_SECONDS:g}s",
        },
        f"{prefix}-lenient": {
            "namespaceSelector": cluster.only_in(LENIENT),
            "images": images,
            "action": "Mutate",
            "onResolveError": "Allow",
        },
    }
    with ecr_stub.EcrStub() as stub, control_plane.new_api_client() as api:
        cluster.install_crd(api)
        for namespace in (STRICT, LENIENT, OWN_NAMESPACE):
            if not cluster.call(client.CoreV1Api(api).read_namespace, namespace).ok:
                cluster.create_namespace(api, namespace)
        for name, spec in policies.items():
            created = cluster.create_policy(api, name, spec)
            assert created.ok, created.message
        try:
            yield Env(control_plane, stub, tmp_path_factory.mktemp("resilience"))
        finally:
            for name in policies:
                cluster.delete_policy(api, name)


@pytest.fixture
def stub(env: Env) -> ecr_stub.EcrStub:
    """The shared stub, answering every tag at once, with nothing recorded or queued."""
    env.stub.reset()
    env.stub.configure(
        synthesize=True,
        latency_ms=0,
        failures={},
        archived={},
        pull_through_rules=[],
        upstream={},
        import_refused=None,
    )
    return env.stub


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def pod(namespace: str, *images: str, uid: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "p", "namespace": namespace}
    if uid is not None:
        metadata["uid"] = uid
    containers = [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": containers},
    }


def review(
    obj: dict[str, Any], *, operation: str = "CREATE", old: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": obj["metadata"]["namespace"],
            "operation": operation,
            "userInfo": {"username": "resilience"},
            "object": obj,
            "oldObject": old,
        },
    }


def update(namespace: str, old_image: str, new_image: str) -> dict[str, Any]:
    """An UPDATE of a pod that exists (it has a uid of its own) changing its image."""
    uid = str(uuid.uuid4())
    return review(
        pod(namespace, new_image, uid=uid),
        operation="UPDATE",
        old=pod(namespace, old_image, uid=uid),
    )


def image(tag: str, repository: str = "team/app") -> str:
    return f"{REGISTRY}/{repository}:{tag}"


def new_tag() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def post(
    process: WebhookProcess,
    body: Mapping[str, Any],
    timeout: float = 60.0,
    query: str = "",
    path: str = names.MUTATE_PODS,
) -> Any:
    """POST a review to the mutating path; the AdmissionReview answered (HTTP 200 only)."""
    request = urllib.request.Request(
        process.url(path) + query,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout, context=process.ssl_context()) as r:
        assert r.status == 200
        return json.loads(r.read())


def pinned_images(answer: Mapping[str, Any]) -> list[str]:
    operations = json.loads(base64.b64decode(answer["response"]["patch"]))
    return [op["value"] for op in operations if op["path"].endswith("/image")]


def ecr_calls(stub: ecr_stub.EcrStub) -> int:
    return len(stub.requests("BatchGetImage"))


def rss_kib(process: WebhookProcess) -> int:
    assert process.process is not None
    status = Path(f"/proc/{process.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def not_a_timeout(answer: Mapping[str, Any]) -> bool:
    """The webhook decided, rather than giving up at its own answer-by time."""
    return "could not decide within" not in answer["response"].get("status", {}).get("message", "")


# --------------------------------------------------------------------------
# (a) kopf memory stays bounded under UPDATEs
# --------------------------------------------------------------------------


class _Found:
    """A registry client that finds every image (no registry is needed here)."""

    def lookup(
        self,
        repository: outcomes.Repository,
        queries: Collection[outcomes.Query],
        *,
        timeout: float,
    ) -> Mapping[outcomes.Query, outcomes.Outcome]:
        digest = references.Digest("sha256:" + "0" * 64)
        return {query: outcomes.Found(digest, "application/json") for query in queries}

    def mutability(
        self, repository: outcomes.Repository, *, timeout: float
    ) -> outcomes.MutabilityOutcome:
        return outcomes.Unknown("not asked in this test")


@pytest.mark.parametrize(
    ("memories_class", "kept_per_update"),
    [
        pytest.param(admission._AdmissionOnlyMemories, 0, id="digestguard's memories"),
        # The control: kopf's own class keeps one memory per updated uid, forever. If
        # this ever keeps none, kopf fixed it and the override can go.
        pytest.param(inventory.ResourceMemories, 1, id="kopf's stock memories"),
    ],
)
async def test_kopf_keeps_no_memory_per_updated_pod(
    env: Env,
    monkeypatch: pytest.MonkeyPatch,
    memories_class: type[inventory.ResourceMemories],
    kept_per_update: int,
) -> None:
    created: list[inventory.ResourceMemories] = []

    class Recording(memories_class):  # type: ignore[valid-type,misc]
        def __init__(self) -> None:
            super().__init__()
            created.append(self)

    monkeypatch.setattr(admission, "_AdmissionOnlyMemories", Recording)
    async with _in_process(env, monkeypatch) as admission_server:
        (memories,) = created
        before = len(list(memories.iter_all_memories()))  # the watched namespaces, policies
        updates = [update(STRICT, image("v1"), image("v2")) for _ in range(2000)]
        url = f"http://127.0.0.1:{admission_server.bound_port}/{names.MUTATE_PODS}"
        answers = await _post_all(url, updates, concurrency=20)

        assert all(a["response"]["allowed"] for a in answers)
        assert all(pinned_images(a) for a in answers), "each UPDATE was really decided"
        kept = len(list(memories.iter_all_memories())) - before
        # Namespaces and policies other tests create and delete on the shared control
        # plane may be noticed or forgotten meanwhile: a few memories either way, against
        # one per update (2,000) when it leaks.
        expected = kept_per_update * len(updates)
        assert expected - 20 <= kept <= expected + 20


async def test_a_policy_is_parsed_off_the_event_loop_once_per_generation(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy of thousands of globs costs a third of a second to parse and index; on
    the event loop that stalls every admission. It is parsed in kopf's indexer thread,
    once per generation, not again for each status-only event nor by the first
    admission that matches against it."""
    parses: list[tuple[str, bool]] = []
    compiled_on_loop: list[str] = []
    loop_thread = threading.current_thread()
    real_parse, real_compile = policies.parse, policies._Program.compile

    def parse(name: str, generation: int, spec: Any) -> policies.Policy:
        parses.append((name, threading.current_thread() is loop_thread))
        return real_parse(name, generation, spec)

    def compile_program(pattern: str) -> policies._Program:
        if threading.current_thread() is loop_thread:
            compiled_on_loop.append(pattern)
        return real_compile(pattern)

    events: list[str] = []
    real_index = admission._ParsedPolicies.index

    def index(self: admission._ParsedPolicies, name: str, **kwargs: Any) -> Any:
        events.append(name)
        return real_index(self, name, **kwargs)

    monkeypatch.setattr(policies, "parse", parse)
    monkeypatch.setattr(policies._Program, "compile", staticmethod(compile_program))
    monkeypatch.setattr(admission._ParsedPolicies, "index", index)
    name = f"loading-{uuid.uuid4().hex[:6]}"
    globs = [f"{REGISTRY}/{name}-{n}/**" for n in range(2_000)]
    spec = {"namespaceSelector": cluster.only_in(STRICT), "images": globs, "action": "Mutate"}
    async with _in_process(env, monkeypatch) as admission_server:
        with env.control_plane.new_api_client() as api:
            created = cluster.create_policy(api, name, spec)
            assert created.ok, created.message
            try:
                await asyncio.to_thread(cluster.wait_for_policy, api, name, 60.0)
                # Status-only and label-only changes: watch events with the same generation.
                for n in range(3):
                    custom, resource = cluster._policies(api)
                    labelled = cluster.call(
                        custom.patch_cluster_custom_object,
                        *resource,
                        name,
                        {"metadata": {"labels": {"touched": str(n)}}},
                    )
                    assert labelled.ok, labelled.message
                # Created, its status reported, labelled three times: five events.
                await until(lambda: events.count(name) >= 5)
                url = f"http://127.0.0.1:{admission_server.bound_port}/{names.MUTATE_PODS}"
                pod_image = f"{REGISTRY}/{name}-1999/app:v1"
                answers = await _post_all(url, [review(pod(STRICT, pod_image))], concurrency=1)
                assert pinned_images(answers[0]), "the policy was in force"
            finally:
                cluster.delete_policy(api, name)
    mine = [on_loop for parsed_name, on_loop in parses if parsed_name == name]
    assert mine, "the policy was parsed"
    assert not any(mine), "parsed on the event loop"
    assert len(mine) == 1, f"parsed {len(mine)} times for one generation"
    assert not compiled_on_loop, f"{len(compiled_on_loop)} globs compiled on the event loop"


async def test_a_pod_of_thousands_of_containers_is_handled_off_the_event_loop(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step that grows with the pod (JSON in and out, kopf's copy of the object,
    planning, deciding, the patch) runs in a thread or not at all: on the event loop
    a 10,000-container pod held every other admission for 0.2-0.4 s."""
    big = 100_000  # bytes: a 3-container review is ~2 KB, this pod's ~2.7 MB
    loop_thread = threading.current_thread()
    on_loop: list[str] = []
    real_loads, real_dumps = json.loads, json.dumps
    real_deepcopy, real_b64encode = copy.deepcopy, base64.b64encode

    def watch(what: str, size: int) -> None:
        if size > big and threading.current_thread() is loop_thread:
            on_loop.append(f"{what} of {size} bytes")

    def loads(text: Any, *args: Any, **kwargs: Any) -> Any:
        watch("json.loads", len(text))
        return real_loads(text, *args, **kwargs)

    def dumps(obj: Any, *args: Any, **kwargs: Any) -> str:
        out = real_dumps(obj, *args, **kwargs)
        watch("json.dumps", len(out))
        return out

    def deepcopy(obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(obj, dict) and threading.current_thread() is loop_thread:
            watch("copy.deepcopy", len(real_dumps(obj, default=str)))
        return real_deepcopy(obj, *args, **kwargs)

    def b64encode(data: bytes, *args: Any, **kwargs: Any) -> bytes:
        watch("base64", len(data))
        return real_b64encode(data, *args, **kwargs)

    count = 10_000
    images = [image(f"v{n % 3}", f"team/app{n % 7}") for n in range(count)]
    body = real_dumps(review(pod(STRICT, *images))).encode()
    async with _in_process(env, monkeypatch) as admission_server:
        url = f"http://127.0.0.1:{admission_server.bound_port}/{names.MUTATE_PODS}"
        monkeypatch.setattr(json, "loads", loads)
        monkeypatch.setattr(json, "dumps", dumps)
        monkeypatch.setattr(copy, "deepcopy", deepcopy)
        monkeypatch.setattr(base64, "b64encode", b64encode)
        async with aiohttp.ClientSession() as session:
            headers = {"Content-Type": "application/json"}
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 200
                answer = real_loads(await response.read())
        found = list(on_loop)
        monkeypatch.undo()
    pinned = pinned_images(answer)
    assert answer["response"]["allowed"] is True
    assert len(pinned) == count, "every container pinned"
    assert not found, f"done on the event loop: {found}"


@contextlib.asynccontextmanager
async def _in_process(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[server.AdmissionServer]:
    """The real kopf operator with digestguard's handlers, on this test's event loop."""
    kubeconfig = str(env.control_plane.kubeconfig_path)
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    # kopf's login reads the default location, which the client library fixed at import.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
    kubeapi.load_configuration()
    the_resolver = resolver.Resolver(_Found())
    the_admission = admission.Admission(
        resolver=the_resolver,
        own_namespace=OWN_NAMESPACE,
        resolve_deadline=5.0,
        read_namespace_labels=kubeapi.namespace_labels,
    )
    admission_server = server.AdmissionServer(
        address="127.0.0.1",
        port=0,
        certfile=None,
        keyfile=None,
        answer_within=6.0,
        # The clients share this event loop: their work would read as the server's lag.
        shed_lag=0,
    )
    stop = asyncio.Event()
    operator = asyncio.create_task(the_admission.run(admission_server, stop_flag=stop))
    try:
        await asyncio.wait_for(the_admission.indexes_loaded.wait(), 60)
        await asyncio.wait_for(admission_server.listening.wait(), 60)
        yield admission_server
    finally:
        stop.set()
        await asyncio.wait_for(operator, 60)
        await the_resolver.aclose()


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` for up to a minute (kopf's progress is seen only by its effects)."""
    for _ in range(600):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the condition did not hold within a minute")


async def _post_all(url: str, bodies: list[dict[str, Any]], concurrency: int) -> list[Any]:
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one(body: dict[str, Any]) -> Any:
            async with semaphore, session.post(url, json=body) as response:
                assert response.status == 200
                return await response.json()

        return list(await asyncio.gather(*(one(body) for body in bodies)))


def test_resident_memory_stays_bounded_under_a_stream_of_updates(
    env: Env, stub: ecr_stub.EcrStub
) -> None:
    with env.webhook() as process:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", process.port, context=process.ssl_context(), timeout=60
        )

        def send(count: int) -> None:
            for _ in range(count):
                body = json.dumps(update(STRICT, image("v1"), image("v2"))).encode()
                headers = {"Content-Type": "application/json"}
                connection.request("POST", f"/{names.MUTATE_PODS}", body=body, headers=headers)
                response = connection.getresponse()
                answer = json.loads(response.read())
                assert response.status == 200
                assert answer["response"]["allowed"] is True

        send(500)  # warm-up: caches, allocator arenas, first-use imports
        settled = rss_kib(process)
        send(3000)
        grown = rss_kib(process) - settled
        connection.close()

    # Generous: a healthy process grows by a few MiB at most here; retaining even a
    # few KiB per admission would exceed it.
    assert grown < 24 * 1024, f"RSS grew {grown} KiB over 3,000 UPDATEs"
    assert ecr_calls(stub) == 1, "one tag, resolved once, then cached"


# --------------------------------------------------------------------------
# (b) graceful shutdown
# --------------------------------------------------------------------------


def test_sigterm_stops_readiness_lets_in_flight_admissions_finish_and_exits_zero(
    env: Env, stub: ecr_stub.EcrStub
) -> None:
    stub.configure(latency_ms=2500)  # every registry call is slow: admissions stay in flight
    in_flight = 6
    with env.webhook("--shutdown-delay", "1s") as process:
        answers: list[Any] = []
        failures: list[BaseException] = []

        def admit() -> None:
            try:
                answers.append(post(process, review(pod(STRICT, image(new_tag())))))
            except BaseException as error:  # reported below, in the test's thread
                failures.append(error)

        threads = [threading.Thread(target=admit) for _ in range(in_flight)]
        for thread in threads:
            thread.start()
        cluster.eventually(
            "every admission to reach the registry",
            lambda: ecr_calls(stub) >= in_flight,
            timeout=30,
        )
        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)

        readiness = cluster.eventually("/readyz to answer 503", lambda: _readyz(process), 10)
        assert readiness == 503
        for thread in threads:
            thread.join(60)
        exit_code = process.process.wait(30)

    assert not failures, failures
    assert len(answers) == in_flight
    for answer in answers:
        assert answer["response"]["allowed"] is True
        assert pinned_images(answer), "resolved, not abandoned"
    assert exit_code == 0, process.log_tail()


def test_after_sigterm_a_kept_alive_connection_is_closed_after_its_next_answer(
    env: Env, stub: ecr_stub.EcrStub
) -> None:
    # So that clients move to another replica during the shutdown delay, rather than
    # finding their connection closed under them when the drain ends.
    with env.webhook("--shutdown-delay", "30s") as process:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", process.port, context=process.ssl_context(), timeout=60
        )
        body = json.dumps(review(pod(STRICT, image(new_tag()))))
        headers = {"Content-Type": "application/json"}
        connection.request("POST", f"/{names.MUTATE_PODS}", body, headers)
        first = connection.getresponse()
        first.read()
        assert first.getheader("Connection", "").lower() != "close"

        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)
        cluster.eventually("/readyz to answer 503", lambda: _readyz(process), 10)
        # The idle connection was closed at SIGTERM; a new one gets one answer.
        connection.close()
        connection.request("POST", f"/{names.MUTATE_PODS}", body, headers)
        second = connection.getresponse()
        second.read()
        assert second.status == 200
        assert second.getheader("Connection", "").lower() == "close"
        connection.close()


def _readyz(process: WebhookProcess) -> int | None:
    """The /readyz status once it is no longer 200; None while still ready."""
    url = f"http://127.0.0.1:{process.health_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return None if response.status == 200 else int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code)


# --------------------------------------------------------------------------
# (c) throttling
# --------------------------------------------------------------------------


def test_throttled_calls_are_retried_and_the_pod_still_pinned(
    env: Env, stub: ecr_stub.EcrStub
) -> None:
    stub.queue("ThrottlingException", "LimitExceededException", "ThrottlingException")
    with env.webhook() as process:
        answer = post(process, review(pod(STRICT, image(new_tag()))))

    assert answer["response"]["allowed"] is True
    assert len(pinned_images(answer)) == 1
    assert ecr_calls(stub) == 4, "three throttled attempts, then the answer"


@pytest.mark.parametrize(
    ("namespace", "allowed"),
    [
        pytest.param(STRICT, False, id="onResolveError Deny"),
        pytest.param(LENIENT, True, id="Allow"),
    ],
)
def test_constant_throttling_ends_in_the_policys_decision_not_a_timeout(
    env: Env, stub: ecr_stub.EcrStub, namespace: str, allowed: bool
) -> None:
    stub.configure(always="ThrottlingException")
    with env.webhook("--resolve-deadline", "1s") as process:
        answer = post(process, review(pod(namespace, image(new_tag()))))

    response = answer["response"]
    assert not_a_timeout(answer), response
    assert response["allowed"] is allowed
    assert "patch" not in response
    said = response["status"]["message"] if not allowed else " ".join(response["warnings"])
    assert names.REASON_REGISTRY_UNAVAILABLE in said
    assert ecr_calls(stub) >= 2, "retried while the deadline allowed"


@pytest.mark.parametrize(
    ("namespace", "allowed"),
    [
        pytest.param(STRICT, False, id="onResolveError Deny"),
        pytest.param(LENIENT, True, id="Allow"),
    ],
)
def test_a_shorter_apiserver_timeout_than_the_deadline_still_ends_in_the_policys_decision(
    env: Env, stub: ecr_stub.EcrStub, namespace: str, allowed: bool
) -> None:
    # The apiserver sends `?timeout=` (the webhook's timeoutSeconds); with a registry
    # that never answers, the lookups end in time for the policy to decide.
    stub.configure(always=ecr_stub.HANG)
    with env.webhook("--resolve-deadline", "20s") as process:
        answer = post(process, review(pod(namespace, image(new_tag()))), query="?timeout=3s")

    response = answer["response"]
    assert not_a_timeout(answer), response
    assert response["allowed"] is allowed
    said = response["status"]["message"] if not allowed else " ".join(response["warnings"])
    assert names.REASON_REGISTRY_UNAVAILABLE in said


def test_a_mutating_configuration_pointed_at_the_validating_path_denies_not_admits(
    env: Env, stub: ecr_stub.EcrStub
) -> None:
    # A MutatingWebhookConfiguration sending pods to /validate-pods: the Mutate policy's
    # image arrives tag-only where only validation runs. It must not pass unpinned.
    with env.webhook() as process:
        answer = post(process, review(pod(STRICT, image(new_tag()))), path=names.VALIDATE_PODS)
        pinned = post(process, review(pod(STRICT, image(new_tag()))))
        again = json.loads(base64.b64decode(pinned["response"]["patch"]))
        pinned_pod = pod(STRICT, *[op["value"] for op in again if op["path"].endswith("/image")])
        validated = post(process, review(pinned_pod), path=names.VALIDATE_PODS)

    response = answer["response"]
    assert response["allowed"] is False
    assert names.REASON_TAG_NOT_PINNED in response["status"]["message"]
    assert f"/{names.MUTATE_PODS}" in response["status"]["message"]
    assert validated["response"]["allowed"] is True, validated


def test_a_pod_of_thousands_of_containers_is_decided_whole(
    env: Env, stub: ecr_stub.EcrStub
) -> None:
    # Planned and decided off the event loop: every container is still pinned.
    tag = new_tag()
    count = 3000
    with env.webhook() as process:
        answer = post(process, review(pod(STRICT, *[image(tag)] * count)))
    pinned = pinned_images(answer)
    assert answer["response"]["allowed"] is True
    assert len(pinned) == count
    assert len(set(pinned)) == 1
    assert "@sha256:" in pinned[0]


def test_a_one_mebibyte_image_string_is_denied_in_a_short_message(
    env: Env, stub: ecr_stub.EcrStub
) -> None:
    huge = f"{REGISTRY}/" + "a" * (1 << 20) + ":v1"
    with env.webhook() as process:
        answer = post(process, review(pod(STRICT, huge)))
        log = process.log_tail(400)
    response = answer["response"]
    assert response["allowed"] is False
    assert len(response["status"]["message"]) < 1000
    assert "a" * 1000 not in log


# --------------------------------------------------------------------------
# (d) stale-if-error, end to end
# --------------------------------------------------------------------------


def test_a_cached_digest_is_served_within_max_stale_and_denied_beyond_it(
    env: Env, stub: ecr_stub.EcrStub
) -> None:
    reference = image(new_tag())
    with env.webhook("--cache-ttl", "1s", "--resolve-deadline", "1s") as process:
        fresh = post(process, review(pod(STRICT, reference)))
        resolved_at = time.monotonic()
        (pinned,) = pinned_images(fresh)
        assert not fresh["response"].get("warnings")

        stub.configure(always="ServerException")
        time.sleep(1.5)  # past --cache-ttl, well within maxStale
        stale = post(process, review(pod(STRICT, reference)))

        time.sleep(max(0.0, resolved_at + MAX_STALE_SECONDS + 1.0 - time.monotonic()))
        beyond = post(process, review(pod(STRICT, reference)))

    assert stale["response"]["allowed"] is True
    assert pinned_images(stale) == [pinned], "the digest resolved before the registry failed"
    assert any(names.REASON_STALE_DIGEST in w for w in stale["response"]["warnings"])

    assert not_a_timeout(beyond), beyond
    assert beyond["response"]["allowed"] is False
    assert names.REASON_REGISTRY_UNAVAILABLE in beyond["response"]["status"]["message"]


# --------------------------------------------------------------------------
# ECR as it behaves: archived images, pull-through cache repositories
# --------------------------------------------------------------------------


def test_an_archived_image_is_denied_as_archived_even_under_on_resolve_error_allow(
    env: Env, stub: ecr_stub.EcrStub
) -> None:
    tag = new_tag()
    stub.add_image(
        "team/app", tag, ecr_emulator.docker_manifest(seed=tag), ecr_emulator.DOCKER_MANIFEST
    )
    stub.configure(archived={tag: "ARCHIVED"})
    with env.webhook() as process:
        answer = post(process, review(pod(LENIENT, image(tag))))

    response = answer["response"]
    assert response["allowed"] is False
    assert names.REASON_IMAGE_ARCHIVED in response["status"]["message"]
    assert "--target-storage-class STANDARD" in response["status"]["message"]


def test_a_pull_through_tag_ecr_has_not_imported_is_admitted_by_tag_with_a_warning(
    env: Env, stub: ecr_stub.EcrStub
) -> None:
    tag = new_tag()
    manifest = ecr_emulator.docker_manifest(seed=tag)
    with oci_stub.OciStub() as upstream:
        upstream.manifests[("library/nginx", tag)] = (manifest, ecr_emulator.DOCKER_MANIFEST)
        stub.configure(
            pull_through_rules=[
                {"ecrRepositoryPrefix": "docker-hub", "upstreamRegistryUrl": upstream.host}
            ],
            upstream={
                "docker-hub/library/nginx": {tag: [manifest.decode(), ecr_emulator.DOCKER_MANIFEST]}
            },
            import_refused="AccessDeniedException",
        )
        with env.webhook("--insecure-registries", upstream.host) as process:
            answer = post(process, review(pod(STRICT, image(tag, "docker-hub/library/nginx"))))

    response = answer["response"]
    assert response["allowed"] is True
    assert "patch" not in response
    assert any(names.REASON_NOT_IMPORTED in warning for warning in response["warnings"])
    assert upstream.manifest_requests() == 1
