"""digestguard as users meet it: through a real kube-apiserver.

One `digestguard serve` process serves this module; the apiserver calls it through
the chart's webhook configurations (rendered by Helm, pointed at the process) and
ECR is a moto server over HTTP. Every test works in namespaces of its own, with
policies that select only those namespaces, and pushes images of its own.
Section numbers are those of the end-to-end scenarios in issue 3 (9, the failure
modes, is in test_failure_policies.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp.web
import pytest
from kubernetes import client

from tests.support import cluster
from tests.support.controlplane import ControlPlane
from webhook import names

pytestmark = pytest.mark.e2e

KUBECTL = "kubectl"
ECR_IMAGES = ["*.dkr.ecr.*.amazonaws.com/**"]


@pytest.fixture(scope="module")
def webhook(new_webhook: Any) -> Iterator[cluster.LocalWebhook]:
    """The webhook every test of this module is admitted by."""
    with new_webhook() as webhook:
        yield webhook


@pytest.fixture
def core(kube: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


def kubectl(plane: ControlPlane, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL, f"--kubeconfig={plane.kubeconfig_path}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def repository(prefix: str) -> str:
    return f"e2e/{prefix}-{uuid.uuid4().hex[:6]}"


def stored(core: client.CoreV1Api, namespace: str, name: str) -> cluster.Answer:
    return cluster.call(core.read_namespaced_pod, name, namespace)


# --------------------------------------------------------------------------
# 1, 2: Mutate pins what exists and rejects what does not
# --------------------------------------------------------------------------


def test_a_pod_with_an_ecr_tag_is_stored_pinned_with_its_original_recorded(
    webhook: cluster.LocalWebhook, ecr: Any, core: Any, make_namespace: Any, make_policy: Any
) -> None:
    namespace = make_namespace(webhook)
    make_policy({"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(namespace)})
    repo = repository("pinned")
    digest = ecr.push(repo, "v1")
    index_digest = ecr.push(f"{repo}-multi", "v1", multi_arch=True)

    answer = cluster.call(
        core.create_namespaced_pod,
        namespace,
        cluster.pod("app", ecr.image(repo, "v1"), ecr.image(f"{repo}-multi", "v1")),
    )

    assert answer.status == 201, answer.message
    assert cluster.images_of(answer.body) == {
        "c0": ecr.image(repo, "v1", digest),
        "c1": ecr.image(f"{repo}-multi", "v1", index_digest),
    }
    assert cluster.original_images(answer.body) == {
        "containers/c0": ecr.image(repo, "v1"),
        "containers/c1": ecr.image(f"{repo}-multi", "v1"),
    }
    again = stored(core, namespace, "app").body
    assert cluster.images_of(again) == cluster.images_of(answer.body)
    assert again["metadata"]["annotations"] == answer.body["metadata"]["annotations"]


def test_a_pod_whose_tag_or_repository_does_not_exist_is_rejected_naming_container_image_and_policy(
    webhook: cluster.LocalWebhook, ecr: Any, core: Any, make_namespace: Any, make_policy: Any
) -> None:
    namespace = make_namespace(webhook)
    policy = make_policy({"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(namespace)})
    repo = repository("missing")
    ecr.push(repo, "v1")

    for name, image in (
        ("no-such-tag", ecr.image(repo, "v404")),
        ("no-such-repository", ecr.image(f"{repo}-never-pushed", "v1")),
    ):
        pod = cluster.pod(name, ecr.image(repo, "v1"))
        pod["spec"]["containers"].append({"name": "web", "image": image})
        answer = cluster.call(core.create_namespaced_pod, namespace, pod)

        assert answer.status == 403, answer.message
        assert 'admission webhook "mutate-pods.digestguard.io" denied the request' in answer.message
        assert "containers[web]" in answer.message
        assert repr(image) in answer.message
        assert f"DigestPolicy {policy}" in answer.message
        assert names.REASON_IMAGE_MISSING in answer.message
        assert "containers[c0]" not in answer.message
        assert stored(core, namespace, name).status == 404


# --------------------------------------------------------------------------
# 3: Enforce
# --------------------------------------------------------------------------


def test_enforce_rejects_tag_only_admits_digests_and_with_allow_immutable_tags_immutable_tags(
    webhook: cluster.LocalWebhook,
    ecr: Any,
    kube: Any,
    core: Any,
    make_namespace: Any,
    make_policy: Any,
) -> None:
    namespace = make_namespace(webhook)
    spec: dict[str, Any] = {
        "images": ECR_IMAGES,
        "namespaceSelector": cluster.only_in(namespace),
        "action": "Enforce",
    }
    policy = make_policy(spec)
    mutable, immutable = repository("mutable"), repository("immutable")
    digest = ecr.push(mutable, "v1")
    ecr.create_repository(immutable, "IMMUTABLE")
    ecr.push(immutable, "v1")

    tag_only = cluster.call(
        core.create_namespaced_pod, namespace, cluster.pod("tag", ecr.image(mutable, "v1"))
    )
    assert tag_only.status == 403
    assert 'admission webhook "validate-pods.digestguard.io" denied' in tag_only.message
    assert names.REASON_TAG_NOT_PINNED in tag_only.message
    assert f"DigestPolicy {policy}" in tag_only.message

    for name, image in (
        ("digest", ecr.image(mutable, digest=digest)),
        ("tag-and-digest", ecr.image(mutable, "v1", digest)),
    ):
        pinned = cluster.call(core.create_namespaced_pod, namespace, cluster.pod(name, image))
        assert pinned.status == 201, pinned.message
        assert cluster.images_of(pinned.body) == {"c0": image}, "Enforce never rewrites"
        assert cluster.original_images(pinned.body) is None

    immutable_tag = cluster.pod("immutable-tag", ecr.image(immutable, "v1"))
    refused = cluster.call(core.create_namespaced_pod, namespace, immutable_tag)
    assert refused.status == 403, "without allowImmutableTags every tag-only reference is denied"

    cluster.apply_policy(kube, policy, {**spec, "allowImmutableTags": True})
    admitted = cluster.call(core.create_namespaced_pod, namespace, immutable_tag)
    assert admitted.status == 201, admitted.message
    assert cluster.images_of(admitted.body) == {"c0": ecr.image(immutable, "v1")}
    still_mutable = cluster.call(
        core.create_namespaced_pod, namespace, cluster.pod("mutable-tag", ecr.image(mutable, "v1"))
    )
    assert still_mutable.status == 403
    assert "mutable tag 'v1'" in still_mutable.message


# --------------------------------------------------------------------------
# 4: workloads
# --------------------------------------------------------------------------


def deployment(name: str, image: str, replicas: int = 2) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def test_a_deployments_pods_made_by_the_controller_manager_are_pinned(
    webhook: cluster.LocalWebhook,
    ecr: Any,
    kube: Any,
    core: Any,
    make_namespace: Any,
    make_policy: Any,
) -> None:
    namespace = make_namespace(webhook)
    make_policy({"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(namespace)})
    repo = repository("deployed")
    digest = ecr.push(repo, "v1")
    apps = client.AppsV1Api(kube)

    created = cluster.call(
        apps.create_namespaced_deployment, namespace, deployment("web", ecr.image(repo, "v1"))
    )
    assert created.status == 201, created.message
    assert cluster.images_of(created.body["spec"]["template"]) == {"app": ecr.image(repo, "v1")}, (
        "workload templates are validated, not rewritten"
    )

    def pods() -> list[dict[str, Any]] | None:
        found = cluster.call(core.list_namespaced_pod, namespace, label_selector="app=web").body
        return found["items"] if len(found["items"]) == 2 else None

    for made in cluster.eventually("the Deployment's two pods", pods, 60):
        assert made["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        assert cluster.images_of(made) == {"app": ecr.image(repo, "v1", digest)}
        assert cluster.original_images(made) == {"containers/app": ecr.image(repo, "v1")}


def test_a_deployment_whose_image_is_missing_is_rejected_when_applied(
    webhook: cluster.LocalWebhook, ecr: Any, kube: Any, make_namespace: Any, make_policy: Any
) -> None:
    namespace = make_namespace(webhook)
    policy = make_policy({"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(namespace)})
    repo = repository("undeployable")
    ecr.push(repo, "v1")
    apps = client.AppsV1Api(kube)

    answer = cluster.call(
        apps.create_namespaced_deployment, namespace, deployment("web", ecr.image(repo, "v2"))
    )

    assert answer.status == 403
    assert 'admission webhook "validate-deployments.digestguard.io" denied' in answer.message
    assert "containers[app]" in answer.message
    assert names.REASON_IMAGE_MISSING in answer.message
    assert f"DigestPolicy {policy}" in answer.message
    assert cluster.call(apps.read_namespaced_deployment, "web", namespace).status == 404


# --------------------------------------------------------------------------
# 5: updates and ephemeral containers
# --------------------------------------------------------------------------


def set_image(core: Any, namespace: str, name: str, index: int, image: str) -> cluster.Answer:
    patch = [{"op": "replace", "path": f"/spec/containers/{index}/image", "value": image}]
    return cluster.call(core.patch_namespaced_pod, name, namespace, patch)


def test_changing_a_running_pods_image_is_judged_as_on_create_and_other_containers_are_left_alone(
    webhook: cluster.LocalWebhook, ecr: Any, core: Any, make_namespace: Any, make_policy: Any
) -> None:
    namespace = make_namespace(webhook)
    repo, sidecar = repository("updated"), repository("sidecar")
    ecr.push(repo, "v1")
    v2 = ecr.push(repo, "v2")
    ecr.push(sidecar, "v1")
    # Created before any policy: both images stay tag-only, as on a pod that predates it.
    before = cluster.pod("app", ecr.image(repo, "v1"), ecr.image(sidecar, "v1"))
    assert cluster.call(core.create_namespaced_pod, namespace, before).status == 201
    policy = make_policy({"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(namespace)})

    updated = set_image(core, namespace, "app", 0, ecr.image(repo, "v2"))

    assert updated.status == 200, updated.message
    assert cluster.images_of(updated.body) == {
        "c0": ecr.image(repo, "v2", v2),
        "c1": ecr.image(sidecar, "v1"),  # unchanged: not rewritten, that would restart it
    }
    assert cluster.original_images(updated.body) == {"containers/c0": ecr.image(repo, "v2")}

    missing = set_image(core, namespace, "app", 0, ecr.image(repo, "v404"))
    assert missing.status == 403
    assert "containers[c0]" in missing.message
    assert names.REASON_IMAGE_MISSING in missing.message
    assert f"DigestPolicy {policy}" in missing.message
    assert cluster.images_of(stored(core, namespace, "app").body)["c0"] == ecr.image(repo, "v2", v2)

    relabelled = cluster.call(
        core.patch_namespaced_pod,
        "app",
        namespace,
        [{"op": "add", "path": "/metadata/labels", "value": {"touched": "yes"}}],
    )
    assert relabelled.status == 200, "an update that changes no image is never judged"
    assert cluster.images_of(relabelled.body)["c1"] == ecr.image(sidecar, "v1")


def add_ephemeral(core: Any, namespace: str, pod: str, name: str, image: str) -> cluster.Answer:
    container = {"name": name, "image": image, "targetContainerName": "c0"}
    patch = [{"op": "add", "path": "/spec/ephemeralContainers/-", "value": container}]
    if not stored(core, namespace, pod).body["spec"].get("ephemeralContainers"):
        patch = [{"op": "add", "path": "/spec/ephemeralContainers", "value": [container]}]
    return cluster.call(
        core.patch_namespaced_pod_ephemeralcontainers,
        pod,
        namespace,
        patch,
        _content_type="application/json-patch+json",
    )


def test_an_ephemeral_container_added_through_the_subresource_is_pinned_or_rejected(
    webhook: cluster.LocalWebhook, ecr: Any, core: Any, make_namespace: Any, make_policy: Any
) -> None:
    namespace = make_namespace(webhook)
    policy = make_policy({"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(namespace)})
    app, debug = repository("app"), repository("debug")
    ecr.push(app, "v1")
    debug_digest = ecr.push(debug, "v1")
    created = cluster.call(
        core.create_namespaced_pod, namespace, cluster.pod("app", ecr.image(app, "v1"))
    )
    assert created.status == 201, created.message

    added = add_ephemeral(core, namespace, "app", "debugger", ecr.image(debug, "v1"))

    assert added.status == 200, added.message
    assert cluster.images_of(added.body, "ephemeralContainers") == {
        "debugger": ecr.image(debug, "v1", debug_digest)
    }
    assert cluster.images_of(added.body) == cluster.images_of(created.body)
    # The subresource cannot change annotations; the original is in the webhook's log.
    assert cluster.original_images(added.body) == cluster.original_images(created.body)

    missing = add_ephemeral(core, namespace, "app", "broken", ecr.image(debug, "v404"))
    assert missing.status == 403
    assert "mutate-ephemeralcontainers.digestguard.io" in missing.message
    assert "ephemeralContainers[broken]" in missing.message
    assert "ephemeralContainers[debugger]" not in missing.message, "only new ones are judged"
    assert f"DigestPolicy {policy}" in missing.message


# --------------------------------------------------------------------------
# 6: Audit
# --------------------------------------------------------------------------


def test_audit_admits_unchanged_and_the_client_receives_the_warnings(
    control_plane: ControlPlane,
    webhook: cluster.LocalWebhook,
    ecr: Any,
    core: Any,
    make_namespace: Any,
    make_policy: Any,
) -> None:
    namespace = make_namespace(webhook)
    policy = make_policy(
        {"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(namespace), "action": "Audit"}
    )
    repo = repository("audited")
    ecr.push(repo, "v1")
    pod = cluster.pod("app", ecr.image(repo, "v1"), ecr.image(repo, "v404"))

    answer = cluster.call(core.create_namespaced_pod, namespace, pod)

    assert answer.status == 201, answer.message
    assert cluster.images_of(answer.body) == {
        "c0": ecr.image(repo, "v1"),
        "c1": ecr.image(repo, "v404"),
    }
    assert cluster.original_images(answer.body) is None
    assert any(
        "containers[c0]" in w and names.REASON_TAG_NOT_PINNED in w and policy in w
        for w in answer.warnings
    ), answer.warnings
    assert any(
        "containers[c1]" in w and names.REASON_IMAGE_MISSING in w and policy in w
        for w in answer.warnings
    ), answer.warnings

    pod["metadata"]["name"] = "with-kubectl"
    result = kubectl(control_plane, "-n", namespace, "create", "-f", "-", stdin=json.dumps(pod))
    assert result.returncode == 0, result.stderr
    assert "Warning: containers[c1]" in result.stderr
    assert names.REASON_IMAGE_MISSING in result.stderr


# --------------------------------------------------------------------------
# 7: policies are live
# --------------------------------------------------------------------------


def dry_run_create(core: Any, namespace: str, pod: dict[str, Any]) -> cluster.Answer:
    return cluster.call(core.create_namespaced_pod, namespace, pod, dry_run="All")


def test_a_policy_created_changed_and_deleted_through_the_api_takes_effect_without_a_restart(
    webhook: cluster.LocalWebhook, ecr: Any, kube: Any, core: Any, make_namespace: Any
) -> None:
    namespace = make_namespace(webhook)
    repo = repository("live")
    ecr.push(repo, "v1")
    pod = cluster.pod("app", ecr.image(repo, "v404"))
    name = f"live-{uuid.uuid4().hex[:8]}"
    spec = {"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(namespace)}
    before = webhook.process.process.pid if webhook.process.process else None

    assert dry_run_create(core, namespace, pod).status == 201, "no policy: nothing is checked"
    try:
        condition = cluster.apply_policy(kube, name, spec)
        assert (condition["status"], condition["reason"]) == ("True", names.REASON_ACCEPTED)
        denied = dry_run_create(core, namespace, pod)
        assert denied.status == 403
        assert f"DigestPolicy {name}, action Mutate" in denied.message

        cluster.apply_policy(kube, name, {**spec, "action": "Audit"})
        audited = dry_run_create(core, namespace, pod)
        assert audited.status == 201, audited.message
        assert any(f"DigestPolicy {name}, action Audit" in w for w in audited.warnings)
    finally:
        cluster.delete_policy(kube, name)

    def unchecked() -> bool:
        answer = dry_run_create(core, namespace, pod)
        return answer.status == 201 and not answer.warnings

    cluster.eventually("the deleted policy to stop applying", unchecked)
    assert webhook.process.process is not None
    assert webhook.process.process.pid == before, "the same process, never restarted"
    assert webhook.process.process.poll() is None


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"images": ECR_IMAGES, "action": "Block"}, "spec.action"),
        ({"action": "Mutate"}, "spec.images"),
        ({"images": []}, "spec.images"),
        ({"images": ECR_IMAGES, "onResolveError": "Maybe"}, "spec.onResolveError"),
    ],
)
def test_a_malformed_policy_is_rejected_by_the_crd_schema(
    policy_crd: str, kube: Any, spec: dict[str, Any], field: str
) -> None:
    name = f"malformed-{uuid.uuid4().hex[:8]}"
    answer = cluster.create_policy(kube, name, spec)
    if answer.ok:
        cluster.delete_policy(kube, name)
    assert answer.status == 422, answer.body
    assert field in answer.message


# --------------------------------------------------------------------------
# 8: selectors
# --------------------------------------------------------------------------


def test_pods_outside_a_policys_selectors_are_untouched_and_cause_no_ecr_call(
    webhook: cluster.LocalWebhook, ecr: Any, core: Any, make_namespace: Any, make_policy: Any
) -> None:
    selected = make_namespace(webhook)
    other = make_namespace(webhook)
    make_policy(
        {
            "images": ECR_IMAGES,
            "namespaceSelector": cluster.only_in(selected),
            "podSelector": {"matchLabels": {"pin": "yes"}},
        }
    )
    # Never pushed, never asked for: any lookup would be a registry call.
    image = ecr.image(repository("unseen"), "v1")
    calls = webhook.process.metric("digestguard_registry_calls_total")
    answered = webhook.process.metric(
        "digestguard_admissions_total", handler=names.MUTATE_PODS, decision="allowed"
    )

    for namespace, pod in (
        (other, cluster.pod("other-namespace", image, labels={"pin": "yes"})),
        (selected, cluster.pod("unlabelled-pod", image)),
        (selected, cluster.pod("other-label", image, labels={"pin": "no"})),
    ):
        answer = cluster.call(core.create_namespaced_pod, namespace, pod)
        assert answer.status == 201, answer.message
        assert cluster.images_of(answer.body) == {"c0": image}
        assert cluster.original_images(answer.body) is None
        assert answer.warnings == ()

    assert webhook.process.metric("digestguard_registry_calls_total") == calls
    assert (
        webhook.process.metric(
            "digestguard_admissions_total", handler=names.MUTATE_PODS, decision="allowed"
        )
        >= answered + 3
    ), "the webhook was asked, and allowed without looking anything up"


# --------------------------------------------------------------------------
# 10: reinvocation after another mutating webhook
# --------------------------------------------------------------------------


class SidecarInjector:
    """A second mutating webhook, as a service mesh would have: it adds a container with
    a tag-only ECR image. It records the pods it was shown."""

    def __init__(self, tls: cluster.LoopbackTLS, image: str) -> None:
        self.tls = tls
        self.image = image
        self.seen: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._runner: aiohttp.web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/inject"

    async def _inject(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        review = await request.json()
        pod = review["request"]["object"]
        self.seen.append(pod)
        response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": True}
        if not any(c["name"] == "sidecar" for c in pod["spec"]["containers"]):
            patch = [
                {
                    "op": "add",
                    "path": "/spec/containers/-",
                    "value": {"name": "sidecar", "image": self.image},
                }
            ]
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        return aiohttp.web.json_response(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        )

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = aiohttp.web.Application()
        app.router.add_post("/inject", self._inject)
        self._runner = aiohttp.web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._started.set()
        self._loop.run_forever()

    def __enter__(self) -> SidecarInjector:
        self._thread.start()
        self._started.wait(10)
        return self

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await asyncio.sleep(0.1)  # let the closed connections' transports finish closing

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def configuration(self, name: str, namespace: str) -> dict[str, Any]:
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "inject.sidecar.test",
                    "clientConfig": {"url": self.url, "caBundle": self.tls.ca_bundle},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                        }
                    ],
                    "namespaceSelector": cluster.only_in(namespace),
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "failurePolicy": "Fail",
                    "reinvocationPolicy": "Never",
                }
            ],
        }


def test_a_sidecar_added_by_a_later_mutating_webhook_is_pinned_through_reinvocation(
    webhook: cluster.LocalWebhook,
    ecr: Any,
    kube: Any,
    core: Any,
    loopback_tls: cluster.LoopbackTLS,
    make_namespace: Any,
    make_policy: Any,
) -> None:
    namespace = make_namespace(webhook)
    make_policy({"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(namespace)})
    app, mesh = repository("meshed"), repository("mesh-proxy")
    app_digest = ecr.push(app, "v1")
    proxy_digest = ecr.push(mesh, "1.2")
    ours = webhook.registration.configurations[0]["metadata"]["name"]
    # Mutating configurations run in name order: this one after ours.
    name = f"zz-sidecar-{uuid.uuid4().hex[:6]}"
    assert name > ours

    with (
        SidecarInjector(loopback_tls, ecr.image(mesh, "1.2")) as injector,
        cluster.Registration(kube, [injector.configuration(name, namespace)]),
    ):
        pod = cluster.pod("app", ecr.image(app, "v1"))
        # A new configuration reaches the apiserver's admission chain a moment later.
        cluster.eventually(
            "the sidecar injector to be called",
            lambda: dry_run_create(core, namespace, pod).ok and injector.seen,
        )
        injector.seen.clear()
        answer = cluster.call(core.create_namespaced_pod, namespace, pod)

    assert answer.status == 201, answer.message
    assert cluster.images_of(answer.body) == {
        "c0": ecr.image(app, "v1", app_digest),
        "sidecar": ecr.image(mesh, "1.2", proxy_digest),
    }
    assert cluster.original_images(answer.body) == {
        "containers/c0": ecr.image(app, "v1"),
        "containers/sidecar": ecr.image(mesh, "1.2"),
    }
    # The injector ran after ours (it saw the app pinned), so ours ran again for the sidecar.
    assert cluster.images_of(injector.seen[-1]) == {"c0": ecr.image(app, "v1", app_digest)}


# --------------------------------------------------------------------------
# 11: server-side dry-run
# --------------------------------------------------------------------------


def test_server_side_dry_run_gets_the_same_verdict_and_stores_nothing(
    control_plane: ControlPlane,
    webhook: cluster.LocalWebhook,
    ecr: Any,
    core: Any,
    make_namespace: Any,
    make_policy: Any,
) -> None:
    namespace = make_namespace(webhook)
    policy = make_policy({"images": ECR_IMAGES, "namespaceSelector": cluster.only_in(namespace)})
    repo = repository("dry")
    digest = ecr.push(repo, "v1")
    good, bad = (
        cluster.pod("good", ecr.image(repo, "v1")),
        cluster.pod("bad", ecr.image(repo, "v404")),
    )

    pinned = dry_run_create(core, namespace, good)
    assert pinned.status == 201, pinned.message
    assert cluster.images_of(pinned.body) == {"c0": ecr.image(repo, "v1", digest)}
    assert stored(core, namespace, "good").status == 404

    denied = dry_run_create(core, namespace, bad)
    assert denied.status == 403
    assert f"DigestPolicy {policy}" in denied.message

    applied = kubectl(
        control_plane,
        "-n",
        namespace,
        "apply",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        "-",
        stdin=json.dumps(good),
    )
    assert applied.returncode == 0, applied.stderr
    assert cluster.images_of(json.loads(applied.stdout)) == {"c0": ecr.image(repo, "v1", digest)}
    refused = kubectl(
        control_plane,
        "-n",
        namespace,
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        stdin=json.dumps(bad),
    )
    assert refused.returncode != 0
    assert denied.message in refused.stderr
    assert stored(core, namespace, "good").status == 404

    for real, dry in ((good, pinned), (bad, denied)):
        answer = cluster.call(core.create_namespaced_pod, namespace, real)
        assert answer.status == dry.status
        assert (answer.message, cluster.images_of(answer.body)) == (
            dry.message,
            cluster.images_of(dry.body),
        )
