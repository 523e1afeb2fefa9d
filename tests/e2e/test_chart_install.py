"""The chart in a real apiserver, and the self-managed TLS lifecycle against it.

Helm installs, upgrades and uninstalls the chart; the webhook's TLS bootstrap
(`webhook.tls.secret`) runs with the arguments of the installed Deployment and the
token of its ServiceAccount, so the chart's RBAC is exactly what is exercised.
Every install scopes its webhooks and default policy to namespaces carrying a label
of its own, so other tests sharing the control plane are not affected.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch

from tests.support import bundles, cluster, image, oci_registry, ports
from tests.support.controlplane import ControlPlane
from tests.support.deployed import DeployedContainer
from webhook import names
from webhook.tls import certificates, secret

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "digestguard"
CRD_FILE = CHART / "crds" / "digestpolicies.digestguard.io.yaml"
DAY = datetime.timedelta(days=1)
SHORT = certificates.Validity(ca=10 * DAY, serving=4 * DAY, renew_before=DAY, retired_ca_grace=DAY)


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a client method and return the JSON the apiserver sent."""
    decoded: dict[str, Any] = json.loads(call(*args, _preload_content=False, **kwargs).data)
    return decoded


def status_of(call: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """The HTTP status of a call that is expected to be refused."""
    with pytest.raises(client.ApiException) as refused:
        call(*args, _preload_content=False, **kwargs)
    status: int = refused.value.status
    return status


@pytest.fixture
def namespace(control_plane: ControlPlane, api: Any) -> Iterator[str]:
    name = cluster.unique("tls")
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


# --------------------------------------------------------------------------
# Webhook configurations that intercept nothing (for TLS tests without the chart)
# --------------------------------------------------------------------------


def _inert_webhook(name: str, selector_label: str) -> dict[str, Any]:
    return {
        "name": name,
        "clientConfig": {"url": "https://127.0.0.1:1/unused"},
        "rules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["configmaps"],
            }
        ],
        # No namespace carries this label: the webhook is never called.
        "namespaceSelector": {"matchLabels": {selector_label: "never"}},
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "failurePolicy": "Ignore",
    }


@pytest.fixture
def configurations(api: Any) -> Iterator[secret.WebhookConfigurations]:
    name = cluster.unique("tls-e2e")
    admission = client.AdmissionregistrationV1Api(api)
    webhooks = [_inert_webhook(f"{hook}.{name}.test", name) for hook in ("one", "two", "three")]
    body = {"metadata": {"name": name}, "webhooks": webhooks}
    admission.create_mutating_webhook_configuration(body)
    admission.create_validating_webhook_configuration(body)
    yield secret.WebhookConfigurations(mutating=name, validating=name)
    admission.delete_mutating_webhook_configuration(name)
    admission.delete_validating_webhook_configuration(name)


def published_bundles(api: Any, configurations: secret.WebhookConfigurations) -> list[bytes]:
    admission = client.AdmissionregistrationV1Api(api)
    found = []
    for read, name in (
        (admission.read_mutating_webhook_configuration, configurations.mutating),
        (admission.read_validating_webhook_configuration, configurations.validating),
    ):
        for webhook in raw(read, name)["webhooks"]:
            found.append(base64.b64decode(webhook["clientConfig"].get("caBundle", "")))
    return found


def resource_versions(api: Any, configurations: secret.WebhookConfigurations) -> list[str]:
    admission = client.AdmissionregistrationV1Api(api)
    return [
        raw(admission.read_mutating_webhook_configuration, configurations.mutating)["metadata"][
            "resourceVersion"
        ],
        raw(admission.read_validating_webhook_configuration, configurations.validating)["metadata"][
            "resourceVersion"
        ],
    ]


def stored(api: Any, namespace: str, secret_name: str) -> certificates.Material:
    data = raw(client.CoreV1Api(api).read_namespaced_secret, secret_name, namespace)["data"]

    def entry(key: str) -> bytes:
        return base64.b64decode(data[key])

    return certificates.Material(
        ca=certificates.KeyPair(entry(secret.SECRET_CA_CERT), entry(secret.SECRET_CA_KEY)),
        serving=certificates.KeyPair(entry(secret.SECRET_CERT), entry(secret.SECRET_KEY)),
        bundle_pem=entry(secret.SECRET_BUNDLE),
    )


class Clock:
    """A settable clock, so that renewal is tested without waiting for expiry."""

    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


def replica(
    api: Any,
    namespace: str,
    configurations: secret.WebhookConfigurations,
    tls_dir: Path,
    **options: Any,
) -> secret.SelfManagedTLS:
    return secret.SelfManagedTLS(
        namespace=namespace,
        secret_name="webhook-tls",
        service_name="webhook",
        webhook_configurations=configurations,
        tls_dir=tls_dir,
        settle=0,
        api_client=api,
        **options,
    )


def race(replicas: list[secret.SelfManagedTLS]) -> list[bool]:
    """Reconcile every replica at once, each in its own thread."""
    barrier = threading.Barrier(len(replicas))
    results: dict[int, bool | BaseException] = {}

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = replicas[index].reconcile()
        except BaseException as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(replicas))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    outcomes = [results[i] for i in range(len(replicas))]
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return [bool(outcome) for outcome in outcomes]


# --------------------------------------------------------------------------
# The TLS lifecycle
# --------------------------------------------------------------------------


@pytest.mark.parametrize("secret_before", ["absent", "empty, as the chart creates it"])
def test_replicas_starting_together_make_one_secret_and_agree_on_the_ca(
    api: Any,
    namespace: str,
    configurations: secret.WebhookConfigurations,
    tmp_path: Path,
    secret_before: str,
) -> None:
    core = client.CoreV1Api(api)
    if secret_before != "absent":
        core.create_namespaced_secret(namespace, {"metadata": {"name": "webhook-tls"}})
    replicas = [
        replica(api, namespace, configurations, tmp_path / f"replica-{i}") for i in range(3)
    ]
    assert race(replicas) == [True, True, True]
    secrets = raw(core.list_namespaced_secret, namespace)["items"]
    assert [item["metadata"]["name"] for item in secrets] == ["webhook-tls"]
    material = stored(api, namespace, "webhook-tls")
    for each in replicas:
        assert each.ready
        assert each.cert_file.read_bytes() == material.serving.cert_pem
        assert each.key_file.read_bytes() == material.serving.key_pem
        assert each.key_file.stat().st_mode & 0o077 == 0
    assert certificates.is_issued_by(material.serving.cert_pem, material.ca.cert_pem)
    assert certificates.describe(material.serving.cert_pem).dns_names == (
        certificates.service_dns_names("webhook", namespace)
    )
    assert published_bundles(api, configurations) == [material.bundle_pem] * 6


def test_ca_bundle_is_patched_only_when_it_differs(
    api: Any, namespace: str, configurations: secret.WebhookConfigurations, tmp_path: Path
) -> None:
    first = replica(api, namespace, configurations, tmp_path)
    assert first.reconcile() is True
    versions = resource_versions(api, configurations)
    assert first.reconcile() is False
    assert resource_versions(api, configurations) == versions


def test_a_ca_bundle_removed_by_a_reapply_is_restored(
    api: Any, namespace: str, configurations: secret.WebhookConfigurations, tmp_path: Path
) -> None:
    tls = replica(api, namespace, configurations, tmp_path)
    tls.reconcile()
    admission = client.AdmissionregistrationV1Api(api)
    strip = [{"op": "remove", "path": "/webhooks/1/clientConfig/caBundle"}]
    admission.patch_validating_webhook_configuration(
        configurations.validating, strip, _content_type="application/json-patch+json"
    )
    assert b"" in published_bundles(api, configurations)
    assert tls.reconcile() is False  # the files were right all along
    material = stored(api, namespace, "webhook-tls")
    assert published_bundles(api, configurations) == [material.bundle_pem] * 6


def test_a_replaced_or_late_webhook_configuration_gets_its_ca_bundle_back_at_once(
    api: Any, namespace: str, configurations: secret.WebhookConfigurations, tmp_path: Path
) -> None:
    # The periodic round is an hour away: only the watch can bring the caBundle back.
    tls = replica(api, namespace, configurations, tmp_path, interval=3600.0)
    admission = client.AdmissionregistrationV1Api(api)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_until_complete, args=(tls.run(stop),))
    runner.start()
    try:
        cluster.eventually("the first round to publish", lambda: tls.ready, timeout=60)
        material = stored(api, namespace, "webhook-tls")
        assert published_bundles(api, configurations) == [material.bundle_pem] * 6

        # `kubectl replace` with the file as written: no caBundle.
        current = raw(admission.read_validating_webhook_configuration, configurations.validating)
        for webhook in current["webhooks"]:
            webhook["clientConfig"].pop("caBundle", None)
        admission.replace_validating_webhook_configuration(configurations.validating, current)
        assert b"" in published_bundles(api, configurations)
        cluster.eventually(
            "the replaced configuration's caBundle to come back",
            lambda: published_bundles(api, configurations) == [material.bundle_pem] * 6,
            timeout=60,
        )

        # Deleted and created again after the replica started, as a late install does.
        body = raw(admission.read_mutating_webhook_configuration, configurations.mutating)
        admission.delete_mutating_webhook_configuration(configurations.mutating)
        for webhook in body["webhooks"]:
            webhook["clientConfig"].pop("caBundle", None)
        admission.create_mutating_webhook_configuration(
            {"metadata": {"name": configurations.mutating}, "webhooks": body["webhooks"]}
        )
        cluster.eventually(
            "the created configuration's caBundle to come",
            lambda: published_bundles(api, configurations) == [material.bundle_pem] * 6,
            timeout=60,
        )
    finally:
        loop.call_soon_threadsafe(stop.set)
        runner.join(60)
        loop.close()


def test_serving_certificate_near_expiry_is_renewed_under_the_same_ca(
    api: Any, namespace: str, configurations: secret.WebhookConfigurations, tmp_path: Path
) -> None:
    clock = Clock()
    tls = replica(api, namespace, configurations, tmp_path, validity=SHORT, clock=clock)
    tls.reconcile()
    before = stored(api, namespace, "webhook-tls")
    versions = resource_versions(api, configurations)

    clock.now += 3 * DAY + datetime.timedelta(minutes=1)  # within a day of expiry
    assert tls.reconcile() is True
    after = stored(api, namespace, "webhook-tls")
    assert after.ca == before.ca
    assert after.bundle_pem == before.bundle_pem
    assert after.serving != before.serving
    assert tls.cert_file.read_bytes() == after.serving.cert_pem
    # Same CA, same bundle: the webhook configurations are not touched.
    assert resource_versions(api, configurations) == versions


def test_ca_near_expiry_is_rotated_with_both_cas_in_the_bundle_until_the_grace_ends(
    api: Any, namespace: str, configurations: secret.WebhookConfigurations, tmp_path: Path
) -> None:
    clock = Clock()
    rotating = replica(api, namespace, configurations, tmp_path / "a", validity=SHORT, clock=clock)
    other = replica(api, namespace, configurations, tmp_path / "b", validity=SHORT, clock=clock)
    race([rotating, other])
    old = stored(api, namespace, "webhook-tls")

    # 5 days and a minute later the CA cannot outlive a new 4-day certificate plus margin.
    clock.now += 5 * DAY + datetime.timedelta(minutes=1)
    assert rotating.reconcile() is True
    new = stored(api, namespace, "webhook-tls")
    assert new.ca != old.ca
    assert bundles.split(new.bundle_pem) == (new.ca.cert_pem, old.ca.cert_pem)
    assert published_bundles(api, configurations) == [new.bundle_pem] * 6
    # Both certificates in use during the overlap are trusted by the published bundle.
    assert certificates.is_issued_by(new.serving.cert_pem, new.ca.cert_pem)
    assert certificates.is_issued_by(old.serving.cert_pem, old.ca.cert_pem)

    # The other replica adopts the rotation rather than rotating again.
    assert other.reconcile() is True
    assert stored(api, namespace, "webhook-tls") == new
    assert other.cert_file.read_bytes() == new.serving.cert_pem

    # A day after the new CA was made, the old one leaves the bundle.
    clock.now += DAY + datetime.timedelta(hours=1)
    assert other.reconcile() is False
    trimmed = stored(api, namespace, "webhook-tls")
    assert bundles.split(trimmed.bundle_pem) == (new.ca.cert_pem,)
    assert published_bundles(api, configurations) == [trimmed.bundle_pem] * 6


async def test_run_keeps_reconciling_and_reports_file_changes(
    api: Any, namespace: str, configurations: secret.WebhookConfigurations, tmp_path: Path
) -> None:
    changes: list[bytes] = []
    changed = asyncio.Event()
    tls = replica(api, namespace, configurations, tmp_path, interval=0.2)

    def on_change() -> None:  # called on the event loop, as the HTTPS server needs
        changes.append(tls.cert_file.read_bytes())
        changed.set()

    tls.on_change = on_change
    stop = asyncio.Event()
    task = asyncio.create_task(tls.run(stop))
    try:
        await asyncio.wait_for(changed.wait(), timeout=30)
        changed.clear()
        assert tls.ready
        first = stored(api, namespace, "webhook-tls")
        # Someone deletes the Secret: the loop makes a new CA and certificate.
        await asyncio.to_thread(
            client.CoreV1Api(api).delete_namespaced_secret, "webhook-tls", namespace
        )
        await asyncio.wait_for(changed.wait(), timeout=30)
        second = stored(api, namespace, "webhook-tls")
        assert second.ca != first.ca
        assert changes == [first.serving.cert_pem, second.serving.cert_pem]
        # The old CA stays trusted for the replicas that still serve its certificate.
        assert bundles.split(second.bundle_pem) == (
            second.ca.cert_pem,
            first.ca.cert_pem,
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


# --------------------------------------------------------------------------
# The chart
# --------------------------------------------------------------------------


class Release:
    """One Helm release of the chart, scoped to namespaces labelled for it."""

    def __init__(self, plane: ControlPlane, helm: Path) -> None:
        self.plane = plane
        self.helm_binary = helm
        self.name = cluster.unique("dg")
        self.namespace = self.name
        self.fullname = f"{self.name}-digestguard"
        self.scope = {"digestguard-e2e": self.name}

    def helm_command(self, *args: str) -> list[str]:
        return [
            str(self.helm_binary),
            "--kubeconfig",
            str(self.plane.kubeconfig_path),
            "--namespace",
            self.namespace,
            *args,
        ]

    def helm(self, *args: str) -> str:
        result = subprocess.run(
            self.helm_command(*args),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
        return result.stdout

    def scoped_values(self) -> list[str]:
        (key, value), = self.scope.items()  # fmt: skip
        return [
            "--values",
            str(cluster.IMAGE_VALUES),
            "--set-string",
            f"webhook.namespaceSelector.matchLabels.{key}={value}",
            "--set-string",
            f"defaultPolicy.spec.namespaceSelector.matchLabels.{key}={value}",
        ]

    def install(self, *args: str) -> str:
        return self.helm(
            "install", self.name, str(CHART), "--create-namespace", *self.scoped_values(), *args
        )

    def upgrade(self, *args: str) -> str:
        return self.helm("upgrade", self.name, str(CHART), *self.scoped_values(), *args)

    def uninstall(self) -> str:
        return self.helm("uninstall", self.name, "--wait", "--timeout", "120s")


@pytest.fixture
def release(control_plane: ControlPlane, helm_binary: Path, api: Any) -> Iterator[Release]:
    installed = Release(control_plane, helm_binary)
    yield installed
    subprocess.run(
        [
            str(helm_binary),
            "--kubeconfig",
            str(control_plane.kubeconfig_path),
            "--namespace",
            installed.namespace,
            "uninstall",
            installed.name,
            "--ignore-not-found",
        ],
        capture_output=True,
        timeout=300,
        check=False,
    )
    with contextlib.suppress(client.ApiException):
        client.CoreV1Api(api).delete_namespace(installed.namespace)


def service_account_token(api: Any, namespace: str, account: str) -> str:
    """A fresh token of the ServiceAccount, as the kubelet would project it."""
    token: str = raw(
        client.CoreV1Api(api).create_namespaced_service_account_token,
        account,
        namespace,
        {"spec": {"expirationSeconds": 3600}},
    )["status"]["token"]
    return token


def service_account_kubeconfig(
    plane: ControlPlane, api: Any, namespace: str, account: str, directory: Path
) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount, with a fresh token."""
    kubeconfig = json.loads(plane.kubeconfig_path.read_text())
    kubeconfig["users"][0]["user"] = {"token": service_account_token(api, namespace, account)}
    path = directory / f"{account}.kubeconfig"
    path.write_text(json.dumps(kubeconfig))
    return path


def service_account_mount(
    plane: ControlPlane, api: Any, namespace: str, account: str, directory: Path
) -> Path:
    """What the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount."""
    directory.mkdir(parents=True)
    (directory / "token").write_text(service_account_token(api, namespace, account))
    (directory / "ca.crt").write_bytes(plane.ca_path.read_bytes())
    (directory / "namespace").write_text(namespace)
    for entry in directory.iterdir():
        entry.chmod(0o644)
    return directory


def service_account_client(
    plane: ControlPlane, api: Any, namespace: str, account: str, tmp_path: Path
) -> Any:
    """An ApiClient that authenticates as the ServiceAccount, with a fresh token."""
    path = service_account_kubeconfig(plane, api, namespace, account, tmp_path)
    return config.new_client_from_config(config_file=str(path))


def deployed_replica(
    plane: ControlPlane, api: Any, release: Release, root: Path, tmp_path: Path
) -> tuple[secret.SelfManagedTLS, Any]:
    """The TLS bootstrap as the installed Deployment would run it, and its client."""
    deployment = raw(
        client.AppsV1Api(api).read_namespaced_deployment, release.fullname, release.namespace
    )
    container = DeployedContainer(
        api=api, workload=deployment, pod_name=root.name, root=root, stand_ins={}
    )
    assert container.container["command"] == ["digestguard", "serve"]
    assert container.environment()["POD_NAMESPACE"] == release.namespace
    flags = container.flags
    assert flags["tls-mode"] == "self-managed"
    sa_client = service_account_client(
        plane, api, release.namespace, container.pod_spec["serviceAccountName"], tmp_path
    )
    tls = secret.SelfManagedTLS(
        namespace=container.namespace,
        secret_name=flags["tls-secret-name"],
        service_name=flags["service-name"],
        webhook_configurations=secret.WebhookConfigurations(
            mutating=flags["mutating-webhook-configuration"],
            validating=flags["validating-webhook-configuration"],
        ),
        tls_dir=Path(container.host_path(flags["tls-dir"])),
        settle=0,
        api_client=sa_client,
    )
    return tls, sa_client


def chart_configurations(release: Release) -> secret.WebhookConfigurations:
    return secret.WebhookConfigurations(mutating=release.fullname, validating=release.fullname)


def test_chart_installs_and_the_deployed_replicas_bootstrap_tls_with_its_rbac(
    control_plane: ControlPlane, api: Any, release: Release, tmp_path: Path
) -> None:
    notes = release.install("--set", "registries.pullSecrets={regcred}")
    assert "Check that it works" in notes
    assert f"Secret {release.namespace}/{release.fullname}-tls" in notes

    core = client.CoreV1Api(api)
    extensions = client.ApiextensionsV1Api(api)
    assert raw(extensions.read_custom_resource_definition, names.POLICY_RESOURCE)
    policy = raw(
        client.CustomObjectsApi(api).get_cluster_custom_object,
        names.GROUP,
        names.VERSION,
        names.PLURAL,
        f"{release.fullname}-ecr",
    )
    assert policy["spec"]["action"] == "Mutate"
    assert policy["spec"]["maxStale"] == "10m"
    placeholder = raw(core.read_namespaced_secret, f"{release.fullname}-tls", release.namespace)
    assert not placeholder.get("data")
    configurations = chart_configurations(release)
    assert set(published_bundles(api, configurations)) == {b""}

    # Two replicas of the Deployment start together.
    first, sa_client = deployed_replica(control_plane, api, release, tmp_path / "a", tmp_path)
    second, _ = deployed_replica(control_plane, api, release, tmp_path / "b", tmp_path)
    assert race([first, second]) == [True, True]
    material = stored(api, release.namespace, f"{release.fullname}-tls")
    assert first.cert_file.read_bytes() == second.cert_file.read_bytes()
    assert first.cert_file.read_bytes() == material.serving.cert_pem
    assert certificates.describe(material.serving.cert_pem).dns_names == (
        certificates.service_dns_names(release.fullname, release.namespace)
    )
    counts = (len(names.MUTATING_HANDLERS), len(names.VALIDATING_HANDLERS))
    assert published_bundles(api, configurations) == [material.bundle_pem] * sum(counts)

    # The ServiceAccount can do what the webhook does, and no more.
    sa_core = client.CoreV1Api(sa_client)
    sa_admission = client.AdmissionregistrationV1Api(sa_client)
    core.create_namespaced_secret(release.namespace, {"metadata": {"name": "not-its-own"}})
    assert status_of(sa_core.read_namespaced_secret, "not-its-own", release.namespace) == 403
    assert status_of(sa_core.list_namespaced_secret, release.namespace) == 403
    # The pull Secret it was named (registries.pullSecrets): get, and nothing more.
    pull_secret = cluster.docker_registry_secret("regcred", "ghcr.io", "reader", "x")
    core.create_namespaced_secret(release.namespace, pull_secret)
    assert raw(sa_core.read_namespaced_secret, "regcred", release.namespace)["data"]
    assert status_of(sa_core.patch_namespaced_secret, "regcred", release.namespace, {}) == 403
    assert status_of(sa_core.delete_namespaced_secret, "regcred", release.namespace) == 403
    assert status_of(sa_core.read_namespaced_secret, "default-token", "default") == 403
    assert status_of(sa_admission.read_mutating_webhook_configuration, "someone-elses") == 403
    assert status_of(sa_admission.list_mutating_webhook_configuration) == 403
    # ...but may list (and so watch) its own by name, for the caBundle watch.
    own = {"field_selector": f"metadata.name={configurations.mutating}"}
    listed = raw(sa_admission.list_mutating_webhook_configuration, **own)
    assert [item["metadata"]["name"] for item in listed["items"]] == [configurations.mutating]
    own = {"field_selector": f"metadata.name={configurations.validating}"}
    assert raw(sa_admission.list_validating_webhook_configuration, **own)["items"]
    # One revision, one digest: it lists pods (by label) and warns on their owners,
    # but reads no single pod, changes none, and posts nothing but Events.
    assert raw(sa_core.list_namespaced_pod, "default", label_selector="pod-template-hash=x")
    assert status_of(sa_core.read_namespaced_pod, "any", "default") == 403
    assert status_of(sa_core.delete_namespaced_pod, "any", "default") == 403
    event = {
        "metadata": {"generateName": "rbac-check."},
        "involvedObject": {"kind": "Pod", "name": "any", "namespace": "default"},
        "reason": "RbacCheck",
        "message": "the webhook may post Warning Events",
        "type": "Warning",
    }
    assert raw(sa_core.create_namespaced_event, "default", event)["reason"] == "RbacCheck"
    assert status_of(sa_core.list_namespaced_event, "default") == 403
    status_patch = {"status": {"observedGeneration": 1}}
    raw(
        client.CustomObjectsApi(sa_client).patch_cluster_custom_object_status,
        names.GROUP,
        names.VERSION,
        names.PLURAL,
        f"{release.fullname}-ecr",
        status_patch,
        _content_type="application/merge-patch+json",
    )
    assert raw(client.CoreV1Api(sa_client).list_namespace)["items"]

    # An upgrade keeps the certificate and the caBundle the webhook patched in.
    release.upgrade(
        "--reuse-values", "--set", "resolver.cacheTTL=2m", "--set", "webhook.timeoutSeconds=12"
    )
    assert stored(api, release.namespace, f"{release.fullname}-tls") == material
    assert published_bundles(api, configurations) == [material.bundle_pem] * sum(counts)
    admission = client.AdmissionregistrationV1Api(api)
    upgraded = raw(admission.read_validating_webhook_configuration, release.fullname)
    assert {webhook["timeoutSeconds"] for webhook in upgraded["webhooks"]} == {12}
    assert first.reconcile() is False


# --------------------------------------------------------------------------
# The installed Deployment, run as written
# --------------------------------------------------------------------------


def serve_from_this_machine(api: Any, release: Release) -> None:
    """Route the chart's Service to this machine, as kube-proxy routes it to a pod.

    The apiserver calls a webhook Service at its ClusterIP; with no pod network here, an
    ExternalName Service makes it dial 127.0.0.1 (at the webhook configuration's port)
    instead. Everything else is the chart's: the configurations' Service reference and
    path, and the TLS check of the certificate for `<service>.<namespace>.svc` against
    the caBundle the webhook publishes.
    """
    client.CoreV1Api(api).patch_namespaced_service(
        release.fullname,
        release.namespace,
        {"spec": {"type": "ExternalName", "externalName": "127.0.0.1", "clusterIP": None}},
    )


def assert_confined_as_the_pod_says(webhook: DeployedContainer, deployment: Any) -> None:
    """The running process has the pod's user, no privileges and a read-only root."""
    assert webhook.process is not None
    proc = Path(f"/proc/{webhook.process.pid}")
    status = dict(
        line.split(":\t", 1) for line in (proc / "status").read_text().splitlines() if ":\t" in line
    )
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    user, group = pod_security["runAsUser"], pod_security["runAsGroup"]
    assert status["Uid"].split() == [str(user)] * 4
    assert status["Gid"].split() == [str(group)] * 4
    assert status["NoNewPrivs"].strip() == "1"
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0
    # In its own mount table (paths as it sees them): / read-only, /tmp a writable tmpfs.
    mounts = {}
    for line in (proc / "mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        mounts[fields[4]] = (fields[5].split(","), fields[separator + 1])
    assert "ro" in mounts["/"][0]
    assert mounts["/tmp"][1] == "tmpfs"
    assert "rw" in mounts["/tmp"][0]


def helm_test(
    api: Any, release: Release, webhook_image: Any, root: Path
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """`helm test`, with its test pod run from the image as a kubelet would run it (the
    Service's name resolving to this machine) and the pod's phase reported back, so that
    Helm sees the outcome. Returns (helm test, the pod's run)."""
    core = client.CoreV1Api(api)
    name = f"{release.fullname}-test"
    command = release.helm_command("test", release.name, "--timeout", "120s")
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as helm:
        try:

            def created() -> dict[str, Any] | None:
                answer = cluster.call(core.read_namespaced_pod, name, release.namespace)
                return answer.body if answer.ok else None

            pod = cluster.eventually("the helm test pod", created, timeout=60)
            container = DeployedContainer(
                api=api,
                workload=pod,
                pod_name=name,
                root=root,
                stand_ins={},
                image=(webhook_image.rootfs, webhook_image.layout.config),
                host_aliases={"127.0.0.1": [f"{release.fullname}.{release.namespace}.svc"]},
            )
            run = container.run(timeout=90)
            phase = "Succeeded" if run.returncode == 0 else "Failed"
            core.patch_namespaced_pod_status(name, release.namespace, {"status": {"phase": phase}})
            stdout, stderr = helm.communicate(timeout=60)
        finally:
            if helm.poll() is None:
                helm.kill()
    return subprocess.CompletedProcess(command, helm.returncode, stdout, stderr), run


def existing_tls_secret(api: Any, release: Release, directory: Path) -> Path:
    """A CA and a certificate for the release's Service, as a user brings them for
    tls.mode=existingSecret: a Secret in the (existing) release namespace; returns the
    CA file."""
    now = datetime.datetime.now(datetime.UTC)
    ca = certificates.create_ca("team-ca", now)
    dns_names = certificates.service_dns_names(release.fullname, release.namespace)
    serving = certificates.create_serving_cert(ca, list(dns_names), now, 2 * DAY)
    directory.mkdir(parents=True)
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    secret = {
        "metadata": {"name": f"{release.fullname}-team-tls"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": serving.cert_pem.decode(), "tls.key": serving.key_pem.decode()},
    }
    client.CoreV1Api(api).create_namespaced_secret(release.namespace, secret)
    return directory / "ca.crt"


@pytest.mark.parametrize(
    ("runtime", "tls"),
    [("image", "selfManaged"), ("virtualenv", "selfManaged"), ("image", "existingSecret")],
)
def test_the_installed_deployment_run_as_written_pins_pods_and_rejects_a_missing_image(
    control_plane: ControlPlane,
    api: Any,
    release: Release,
    ecr: Any,
    tmp_path: Path,
    runtime: str,
    tls: str,
    request: pytest.FixtureRequest,
) -> None:
    """The Deployment's container, from the image built from this checkout (as a
    container runtime would run it: tests.support.image) or from this virtualenv."""
    webhook_image = request.getfixturevalue("webhook_image") if runtime == "image" else None
    with (
        oci_registry.running_registry(secured=True) as private_ca,
        oci_registry.running_registry() as plain_http,
    ):
        # The Service port is the container port: the apiserver dials it directly.
        port, health_port = ports.free_port(), ports.free_port()
        values = [
            *("--set", f"service.port={port}", "--set", f"containerPorts.webhook={port}"),
            *("--set", f"containerPorts.health={health_port}", "--set", "aws.region=us-east-1"),
            *("--set-file", f"registries.caBundle={private_ca.ca_file}"),
            *("--set", f"registries.insecure={{{plain_http.host}}}"),
        ]
        if tls == "existingSecret":
            client.CoreV1Api(api).create_namespace({"metadata": {"name": release.namespace}})
            ca_file = existing_tls_secret(api, release, tmp_path / "team-tls")
            values += [
                *("--set", "tls.mode=existingSecret"),
                *("--set", f"tls.existingSecret.name={release.fullname}-team-tls"),
                *("--set-file", f"tls.existingSecret.caBundle={ca_file}"),
            ]
        release.install(*values)
        serve_from_this_machine(api, release)
        deployment = raw(
            client.AppsV1Api(api).read_namespaced_deployment, release.fullname, release.namespace
        )
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        # What the cluster gives the pod: AWS credentials (IRSA), ECR (an emulator) and
        # the ServiceAccount's token (where the kubelet mounts it, or as a kubeconfig).
        stand_ins = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
            "DIGESTGUARD_ECR_ENDPOINT_URL": ecr.url,
        }
        extra_mounts = {}
        if webhook_image is None:
            stand_ins["KUBECONFIG"] = str(
                service_account_kubeconfig(control_plane, api, release.namespace, account, tmp_path)
            )
        else:
            stand_ins["KUBERNETES_SERVICE_HOST"] = "127.0.0.1"
            stand_ins["KUBERNETES_SERVICE_PORT"] = str(control_plane.apiserver_port)
            extra_mounts[image.SERVICE_ACCOUNT_DIR] = service_account_mount(
                control_plane, api, release.namespace, account, tmp_path / "serviceaccount"
            )
        webhook = DeployedContainer(
            api=api,
            workload=deployment,
            pod_name=f"{release.fullname}-0",
            root=tmp_path / "pod",
            stand_ins=stand_ins,
            image=(
                None
                if webhook_image is None
                else (webhook_image.rootfs, webhook_image.layout.config)
            ),
            extra_mounts=extra_mounts,
        )
        assert webhook.flags["insecure-registries"] == plain_http.host
        assert webhook.environment()["POD_NAMESPACE"] == release.namespace
        assert "KUBECONFIG" not in {item["name"] for item in webhook.container["env"]}

        with webhook:
            if webhook_image is not None:
                assert_confined_as_the_pod_says(webhook, deployment)
            # Ready means: the certificate loaded (for selfManaged: its own CA and
            # certificate made and published with the chart's RBAC), and the chart's
            # default policy loaded and reported on.
            counts = len(names.MUTATING_HANDLERS) + len(names.VALIDATING_HANDLERS)
            if tls == "selfManaged":
                assert webhook.flags["tls-mode"] == "self-managed"
                bundle = stored(api, release.namespace, f"{release.fullname}-tls").bundle_pem
            else:
                assert webhook.flags["tls-mode"] == "files"
                bundle = ca_file.read_bytes()
            assert published_bundles(api, chart_configurations(release)) == [bundle] * counts
            default_policy = f"{release.fullname}-ecr"
            assert cluster.wait_for_policy(api, default_policy)["status"] == "True"

            prove_pinning_and_refusal(api, release, ecr, private_ca, plain_http, default_policy)
            prove_the_audit_runs_with_the_charts_rbac(api, release, webhook)

            if webhook_image is not None:
                # `helm test`: its pod, from the same image, finds a ready replica behind
                # the Service, and TLS on the admission port verified with the CA.
                tested, pod_run = helm_test(api, release, webhook_image, tmp_path / "helm-test")
                assert pod_run.returncode == 0, pod_run.stdout + pod_run.stderr
                assert "readyz: ready" in pod_run.stdout
                assert "admission port: 405 (certificate verified" in pod_run.stdout
                assert tested.returncode == 0, tested.stderr
                assert "Phase:          Succeeded" in tested.stdout

        # SIGTERM, as the kubelet stops a pod: drained, and a clean exit.
        assert webhook.process is not None
        assert webhook.process.returncode == 0, webhook.log_tail()


def prove_the_audit_runs_with_the_charts_rbac(
    api: Any, release: Release, webhook: DeployedContainer
) -> None:
    """The audit is on by default: the replica takes its Lease and lists every pod with
    the chart's RBAC, and a cycle ends."""
    coordination = client.CoordinationV1Api(api)
    lease = cluster.eventually(
        "the audit Lease",
        lambda: cluster.call(
            coordination.read_namespaced_lease, f"{release.fullname}-audit", release.namespace
        ).body.get("spec"),
        30,
    )
    assert lease["holderIdentity"], "held by the replica (its host name and a suffix)"
    assert webhook.flags["audit-interval"] == "10m"
    cluster.eventually(
        "an audit cycle", lambda: "audit cycle done" in webhook.log_tail(100_000), 60
    )
    assert "audit cycle failed" not in webhook.log_tail(100_000)
    assert "cannot take or renew the audit Lease" not in webhook.log_tail(100_000)


def prove_pinning_and_refusal(
    api: Any,
    release: Release,
    ecr: Any,
    private_ca: oci_registry.Registry,
    plain_http: oci_registry.Registry,
    default_policy: str,
) -> None:
    """In a namespace the release sees: a pod of ECR, private-CA and plain-HTTP images
    is pinned; a pod of a missing ECR tag is refused by the default policy."""
    namespace = cluster.unique("deployed")
    cluster.create_namespace(api, namespace, release.scope)
    other_registries = f"{release.fullname}-registries"
    cluster.apply_policy(
        api,
        other_registries,
        {
            "images": [f"{private_ca.host}/**", f"{plain_http.host}/**"],
            "namespaceSelector": {"matchLabels": release.scope},
        },
    )
    try:
        core = client.CoreV1Api(api)
        repository = cluster.unique("deployed/app")
        digest = ecr.push(repository, "v1")
        private_digest = private_ca.push_image("team/app", "v1", seed=namespace)
        plain_digest = plain_http.push_image("tools/app", "v1", seed=namespace)

        pinned = cluster.call(
            core.create_namespaced_pod,
            namespace,
            cluster.pod(
                "pinned",
                ecr.image(repository, "v1"),
                private_ca.image("team/app", "v1"),
                plain_http.image("tools/app", "v1"),
            ),
        )
        assert pinned.status == 201, pinned.message
        assert list(cluster.images_of(pinned.body).values()) == [
            ecr.image(repository, "v1", digest),
            private_ca.image("team/app", "v1", private_digest),
            plain_http.image("tools/app", "v1", plain_digest),
        ]

        missing = ecr.image(repository, "v2")
        refused = cluster.call(
            core.create_namespaced_pod, namespace, cluster.pod("missing", missing)
        )
        assert refused.status == 403, refused.message
        assert 'webhook "mutate-pods.digestguard.io" denied' in refused.message
        assert repr(missing) in refused.message
        assert names.REASON_IMAGE_MISSING in refused.message
        assert f"DigestPolicy {default_policy}" in refused.message
    finally:
        cluster.delete_policy(api, other_registries)
        cluster.delete_namespace(api, namespace)


def _listed_at(list_call: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The resourceVersion of a list: a watch from it misses nothing written after."""
    listed: dict[str, Any] = json.loads(list_call(*args, _preload_content=False, **kwargs).data)
    version: str = listed["metadata"]["resourceVersion"]
    return version


def _deletions(
    list_call: Callable[..., Any],
    since: str,
    stop: threading.Event,
    into: list[tuple[str, int]],
    *args: Any,
    **kwargs: Any,
) -> None:
    """Record (kind, resourceVersion) of every DELETED event after `since` until `stop`
    is set; each stream resumes where the last one ended, so no event falls between."""
    watcher = watch.Watch()
    while not stop.is_set():
        for event in watcher.stream(
            list_call,
            *args,
            resource_version=since,
            allow_watch_bookmarks=True,
            timeout_seconds=1,
            **kwargs,
        ):
            obj = event["raw_object"]
            since = obj["metadata"]["resourceVersion"]
            if event["type"] == "DELETED":
                into.append((obj["kind"], int(since)))


def test_uninstall_removes_the_webhook_configurations_before_anything_else(
    control_plane: ControlPlane, api: Any, release: Release, tmp_path: Path
) -> None:
    release.install()
    tls, _ = deployed_replica(control_plane, api, release, tmp_path / "tls", tmp_path)
    tls.reconcile()

    admission = client.AdmissionregistrationV1Api(api)
    selector = f"metadata.name={release.fullname}"
    deleted: list[tuple[str, int]] = []
    stop = threading.Event()
    calls: list[tuple[Callable[..., Any], tuple[str, ...]]] = [
        (admission.list_mutating_webhook_configuration, ()),
        (admission.list_validating_webhook_configuration, ()),
        (client.CoreV1Api(api).list_namespaced_service, (release.namespace,)),
        (client.AppsV1Api(api).list_namespaced_deployment, (release.namespace,)),
    ]
    # Listed before the uninstall starts: every deletion comes after these versions.
    watchers = [
        threading.Thread(
            target=_deletions,
            args=(call, _listed_at(call, *args, field_selector=selector), stop, deleted, *args),
            kwargs={"field_selector": selector},
            daemon=True,
        )
        for call, args in calls
    ]
    for watcher in watchers:
        watcher.start()
    try:
        release.uninstall()
        cluster.eventually("the deletions to be seen", lambda: len({k for k, _ in deleted}) == 4)
    finally:
        stop.set()
        for watcher in watchers:
            watcher.join(timeout=5)

    assert status_of(admission.read_mutating_webhook_configuration, release.fullname) == 404
    assert status_of(admission.read_validating_webhook_configuration, release.fullname) == 404
    assert (
        status_of(
            client.CoreV1Api(api).read_namespaced_secret,
            f"{release.fullname}-tls",
            release.namespace,
        )
        == 404
    )
    # etcd revisions order every write in the cluster (the apiserver's resourceVersion):
    # each webhook configuration was gone before the Service or Deployment went.
    webhook_kinds = {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
    last_webhook = max(rv for kind, rv in deleted if kind in webhook_kinds)
    first_backend = min(rv for kind, rv in deleted if kind not in webhook_kinds)
    assert last_webhook < first_backend, sorted(deleted, key=lambda item: item[1])
    # The CRD (and so every user's policies) survives an uninstall.
    assert raw(
        client.ApiextensionsV1Api(api).read_custom_resource_definition, names.POLICY_RESOURCE
    )


def test_an_install_with_the_autoscaler_leaves_the_replica_count_to_it(
    api: Any, release: Release
) -> None:
    release.install("--set", "autoscaling.enabled=true", "--set", "autoscaling.maxReplicas=4")

    hpa = raw(
        client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler,
        release.fullname,
        release.namespace,
    )
    assert hpa["spec"]["scaleTargetRef"]["name"] == release.fullname
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    deployment = raw(
        client.AppsV1Api(api).read_namespaced_deployment, release.fullname, release.namespace
    )
    # Without `replicas` in the chart, the apiserver's default (1) stands until the
    # autoscaler raises it to minReplicas; a helm upgrade never resets it.
    assert deployment["spec"]["replicas"] >= 1
    budget = raw(
        client.PolicyV1Api(api).read_namespaced_pod_disruption_budget,
        release.fullname,
        release.namespace,
    )
    assert budget["spec"]["maxUnavailable"] == 1


def test_pod_pull_secrets_let_the_service_account_get_but_never_list_secrets(
    control_plane: ControlPlane, api: Any, release: Release, tmp_path: Path
) -> None:
    release.install("--set", "registries.podPullSecrets=true")
    account = release.fullname
    sa_core = client.CoreV1Api(
        service_account_client(control_plane, api, release.namespace, account, tmp_path)
    )
    team = cluster.unique("team")
    cluster.create_namespace(api, team)
    try:
        secret = cluster.docker_registry_secret("regcred", "ghcr.io", "reader", "x")
        client.CoreV1Api(api).create_namespaced_secret(team, secret)
        # What the kubelet would use: a Secret and a ServiceAccount, each by name...
        assert raw(sa_core.read_namespaced_secret, "regcred", team)["data"]
        assert raw(sa_core.read_namespaced_service_account, "default", team)
        # ...and nothing that finds Secrets no pod named, or changes them.
        assert status_of(sa_core.list_namespaced_secret, team) == 403
        assert status_of(sa_core.list_secret_for_all_namespaces) == 403
        assert status_of(sa_core.patch_namespaced_secret, "regcred", team, {}) == 403
        assert status_of(sa_core.list_namespaced_service_account, team) == 403
    finally:
        cluster.delete_namespace(api, team)
