"""The local control plane is a real one: versions, RBAC'd admin, controllers, helm."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support import cluster, controlplane
from tests.support.controlplane import ControlPlane, ControlPlaneError

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "envtest-assets.sh"
KUBECTL = os.environ.get("KUBECTL", "kubectl")


@pytest.fixture
def namespace(control_plane: ControlPlane, api: Any) -> Iterator[str]:
    """A fresh namespace whose ``default`` ServiceAccount exists."""
    name = cluster.unique("e2e")
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    control_plane.wait_for_service_account(name)
    yield name
    core.delete_namespace(name)


def kubectl(plane: ControlPlane, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [KUBECTL, f"--kubeconfig={plane.kubeconfig_path}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def test_the_script_and_the_module_agree_on_default_versions() -> None:
    script = SCRIPT.read_text()
    for name, value in [
        ("K8S_VERSION", controlplane.K8S_VERSION),
        ("ETCD_VERSION", controlplane.ETCD_VERSION),
        ("HELM_VERSION", controlplane.HELM_VERSION),
    ]:
        match = re.search(rf'^{name}="\$\{{{name}:-([^}}]+)\}}"$', script, re.MULTILINE)
        assert match, f"{SCRIPT} sets no default for {name}"
        assert match.group(1) == value, f"{name}: script {match.group(1)} != module {value}"


def test_apiserver_reports_the_version_it_was_built_as(control_plane: ControlPlane) -> None:
    served = control_plane.version()
    binary = subprocess.run(
        [str(control_plane.binary("kube-apiserver")), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()[-1]
    assert served["gitVersion"] == binary
    assert served["major"] == "1"
    assert served["gitVersion"].startswith(f"v1.{served['minor']}.")
    if control_plane.assets_dir == controlplane.default_assets_dir().resolve():
        assert served["gitVersion"] == controlplane.K8S_VERSION
        assert served["gitVersion"].startswith("v1.34.")


def test_admin_is_authenticated_and_anonymous_is_not(control_plane: ControlPlane) -> None:
    assert kubectl(control_plane, "auth", "can-i", "*", "*").strip() == "yes"
    context = ssl.create_default_context(cafile=str(control_plane.ca_path))
    for headers in ({}, {"Authorization": "Bearer not-a-known-token"}):
        request = urllib.request.Request(
            control_plane.server_url + "/api/v1/namespaces", headers=headers
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10, context=context).close()
        refused.value.close()
        assert refused.value.code == 401


def test_namespace_and_pod_with_kubectl(control_plane: ControlPlane, api: Any) -> None:
    ns = cluster.unique("kubectl")
    kubectl(control_plane, "create", "namespace", ns)
    try:
        control_plane.wait_for_service_account(ns)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1.0"}]},
        }
        kubectl(control_plane, "apply", "-f", "-", stdin=json.dumps(pod))

        stored: Any = client.CoreV1Api(api).read_namespaced_pod("web", ns)
        assert stored.spec.containers[0].image == "registry.invalid/web:1.0"
        # The ServiceAccount admission plugin ran: it set the account and
        # mounted the projected API token.
        assert stored.spec.service_account_name == "default"
        assert any(v.name.startswith("kube-api-access-") for v in stored.spec.volumes)
        # No kubelet: the pod is stored and never scheduled or started.
        assert stored.status.phase == "Pending"
    finally:
        kubectl(control_plane, "delete", "namespace", ns, "--wait=false")


def test_deployment_yields_a_replicaset_and_its_pods(namespace: str, api: Any) -> None:
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    labels = {"app": "web"}
    deployment: Any = apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name="web", image="registry.invalid/web:1")]
                    ),
                ),
            ),
        ),
    )

    def owned_by(obj: Any, uid: str) -> bool:
        return any(ref.uid == uid for ref in obj.metadata.owner_references or [])

    def replicaset() -> Any:
        sets = apps.list_namespaced_replica_set(namespace).items
        return next((rs for rs in sets if owned_by(rs, deployment.metadata.uid)), None)

    rs = cluster.eventually("the Deployment's ReplicaSet", replicaset, timeout=60)

    def pods() -> list[Any]:
        items = core.list_namespaced_pod(namespace).items
        owned = [p for p in items if owned_by(p, rs.metadata.uid)]
        return owned if len(owned) == 2 else []

    created = cluster.eventually("two Pods owned by the ReplicaSet", pods, timeout=60)
    assert {p.spec.containers[0].image for p in created} == {"registry.invalid/web:1"}
    assert all(p.metadata.labels["app"] == "web" for p in created)


def test_helm_installs_a_chart_into_the_control_plane(
    control_plane: ControlPlane, helm_binary: Path, api: Any, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
        "KUBECONFIG": str(control_plane.kubeconfig_path),
    }

    def helm(*args: str) -> str:
        result = subprocess.run(
            [str(helm_binary), *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
        return result.stdout

    version = helm("version", "--short").strip()
    assert version.startswith("v3."), version
    if helm_binary.resolve().parent.name == f"helm-{controlplane.HELM_VERSION}":
        assert version.split("+")[0] == controlplane.HELM_VERSION

    chart = tmp_path / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: smoke\nversion: 0.1.0\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    (chart / "values.yaml").write_text("greeting: hello\n")

    ns = cluster.unique("helm")
    helm("install", "smoke", str(chart), "--namespace", ns, "--create-namespace")
    try:
        stored = client.CoreV1Api(api).read_namespaced_config_map("smoke-settings", ns)
        assert stored.data == {"greeting": "hello"}
        assert "smoke" in helm("list", "--namespace", ns, "--short").split()
    finally:
        helm("uninstall", "smoke", "--namespace", ns)
        client.CoreV1Api(api).delete_namespace(ns)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_ends_every_process_and_may_be_repeated(
    control_plane_assets: Path, tmp_path: Path
) -> None:
    plane = ControlPlane(control_plane_assets, tmp_path / "plane").start()
    try:
        pids = plane.pids
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
        assert all(_alive(pid) for pid in pids.values())
        assert plane.version()["major"] == "1"
    finally:
        plane.stop()
    plane.stop()
    assert not any(_alive(pid) for pid in pids.values())
    for name in pids:
        assert plane.log_path(name).stat().st_size > 0


def test_a_failed_start_reports_the_log_and_cleans_up(
    control_plane_assets: Path, tmp_path: Path
) -> None:
    plane = ControlPlane(
        control_plane_assets,
        tmp_path / "broken",
        extra_apiserver_args=["--no-such-flag=1"],
        start_timeout=60,
    )
    with pytest.raises(ControlPlaneError, match="kube-apiserver") as failure:
        plane.start()
    assert "no-such-flag" in str(failure.value)
    assert "etcd" in plane.pids
    assert not any(_alive(pid) for pid in plane.pids.values())
    plane.stop()
