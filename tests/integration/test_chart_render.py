"""The Helm chart as the real Helm renders it: objects, wiring, and values checking.

The drift test (`test_webhook_paths_are_exactly_the_handler_ids`) ties the webhook
configurations to `webhook.names`: every handler id is a path, with the one rule that
routes its resources, and nothing else is.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import cluster, controlplane
from webhook import cli, errors, names
from webhook.core import durations, policies, selectors
from webhook.registries.oci import client as oci
from webhook.serving import server
from webhook.tls import certificates, secret

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "digestguard"
CRD_FILE = CHART / "crds" / "digestpolicies.digestguard.io.yaml"
VALUES_DIR = Path(__file__).resolve().parent / "chart-values"
VALUES_FILES = sorted(path.name for path in VALUES_DIR.glob("*.yaml"))
IMAGE_VALUES = cluster.IMAGE_VALUES
RELEASE = "dg"
NAMESPACE = "guard-system"
FULLNAME = "dg-digestguard"

HELM_MISSING = (
    "CHART TESTS SKIPPED: helm not found (hack/envtest-assets.sh builds it; or put helm on PATH)"
)


@pytest.fixture(scope="module")
def helm() -> Path:
    found = controlplane.find_helm(controlplane.find_assets())
    if found is None:
        if os.environ.get("DIGESTGUARD_REQUIRE_E2E") == "1":
            pytest.fail(HELM_MISSING.replace("SKIPPED", "REQUIRED"), pytrace=False)
        pytest.skip(HELM_MISSING)
    return found


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


class Rendered:
    """The documents of one `helm template`, hooks apart from release objects."""

    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self.hooks = [doc for doc in documents if "helm.sh/hook" in _annotations(doc)]
        self.objects = [doc for doc in documents if "helm.sh/hook" not in _annotations(doc)]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.objects if doc["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    def kinds(self) -> set[str]:
        return {doc["kind"] for doc in self.objects}

    @property
    def container(self) -> dict[str, Any]:
        containers = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1
        container: dict[str, Any] = containers[0]
        return container

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    @property
    def flags(self) -> dict[str, str]:
        """`--name=value` arguments of `digestguard serve`, by name."""
        parsed = {}
        for arg in self.container["args"]:
            assert arg.startswith("--"), f"{arg!r} is not --flag=value"
            assert "=" in arg, f"{arg!r} is not --flag=value"
            name, _, value = arg[2:].partition("=")
            parsed[name] = value
        return parsed

    def webhooks(self, kind: str) -> list[dict[str, Any]]:
        hooks: list[dict[str, Any]] = self.one(kind)["webhooks"]
        return hooks


def _annotations(doc: dict[str, Any]) -> dict[str, str]:
    return dict((doc.get("metadata") or {}).get("annotations") or {})


def _helm_template(helm: Path, *args: str, image: bool = True) -> subprocess.CompletedProcess[str]:
    """`helm template` with `args` after the image repository (unless `image` is false)."""
    image_values = ["--values", str(IMAGE_VALUES)] if image else []
    return subprocess.run(
        [
            str(helm),
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            *image_values,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@functools.cache
def _render_cached(helm: Path, args: tuple[str, ...]) -> Rendered:
    result = _helm_template(helm, *args)
    assert result.returncode == 0, f"helm template {' '.join(args)} failed:\n{result.stderr}"
    return Rendered([doc for doc in yaml.safe_load_all(result.stdout) if doc])


def render(helm: Path, values_file: str | None = None, *sets: str) -> Rendered:
    args: list[str] = []
    if values_file:
        args += ["--values", str(VALUES_DIR / values_file)]
    for assignment in sets:
        args += ["--set", assignment]
    return _render_cached(helm, tuple(args))


def refusal(helm: Path, *args: str, image: bool = True) -> str:
    """What Helm says when it refuses to render with `args`."""
    result = _helm_template(helm, *args, image=image)
    assert result.returncode != 0, f"helm template {' '.join(args)} was accepted"
    return result.stderr


@pytest.fixture(scope="module")
def defaults(helm: Path) -> Rendered:
    return render(helm, "defaults.yaml")


# --------------------------------------------------------------------------
# Every values file
# --------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_chart_lints_cleanly(helm: Path, values_file: str) -> None:
    result = subprocess.run(
        [
            str(helm),
            "lint",
            "--strict",
            str(CHART),
            *("--values", str(IMAGE_VALUES), "--values", str(VALUES_DIR / values_file)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_every_object_has_the_release_labels(helm: Path, values_file: str) -> None:
    rendered = render(helm, values_file)
    for doc in rendered.objects + rendered.hooks:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, doc["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm", doc["kind"]


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_the_apiserver_never_gives_up_before_the_webhook_answers(
    helm: Path, values_file: str
) -> None:
    rendered = render(helm, values_file)
    deadline = durations.parse_seconds(rendered.flags["resolve-deadline"])
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for webhook in rendered.webhooks(kind):
            # The server answers within the deadline plus 1s (cli: answer_within).
            assert webhook["timeoutSeconds"] > deadline + 1


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_args_are_flags_digestguard_serve_accepts(helm: Path, values_file: str) -> None:
    rendered = render(helm, values_file)
    known = {flag.name for flag in cli.SERVE_FLAGS}
    assert rendered.container["command"] == ["digestguard", "serve"]
    assert set(rendered.flags) <= known, set(rendered.flags) - known
    for flag in ("resolve-deadline", "cache-ttl", "negative-cache-ttl", "mutability-cache-ttl"):
        durations.parse_seconds(rendered.flags[flag])
    for flag in ("port", "health-port", "cache-max-entries", "registry-workers"):
        assert int(rendered.flags[flag]) > 0


# --------------------------------------------------------------------------
# The webhook configurations
# --------------------------------------------------------------------------


def _expected_rule(handler: str) -> dict[str, Any]:
    """The one rule that routes a handler's resources to it, from webhook.names."""
    ((group, plural, subresource),) = names.ROUTES[handler]
    versions = {w_handler: version for w_handler, _, version, _ in names.WORKLOADS}
    return {
        "apiGroups": [group],
        "apiVersions": [versions.get(handler, "v1")],
        "resources": [f"{plural}/{subresource}" if subresource else plural],
        # kubectl debug adds ephemeral containers by UPDATE of the subresource only.
        "operations": ["UPDATE"] if subresource else ["CREATE", "UPDATE"],
        "scope": "Namespaced",
    }


def test_webhook_paths_are_exactly_the_handler_ids(defaults: Rendered) -> None:
    service = defaults.one("Service")
    https_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "https")
    for kind, handlers in (
        ("MutatingWebhookConfiguration", names.MUTATING_HANDLERS),
        ("ValidatingWebhookConfiguration", names.VALIDATING_HANDLERS),
    ):
        webhooks = defaults.webhooks(kind)
        paths = [webhook["clientConfig"]["service"]["path"] for webhook in webhooks]
        assert sorted(paths) == sorted(f"/{handler}" for handler in handlers), kind
        for webhook in webhooks:
            handler = webhook["clientConfig"]["service"]["path"].removeprefix("/")
            assert webhook["name"] == f"{handler}.{names.GROUP}"
            assert webhook["rules"] == [_expected_rule(handler)], handler
            assert set(webhook["rules"][0]["operations"]) <= server.HANDLED_OPERATIONS
            assert webhook["clientConfig"]["service"] == {
                "name": service["metadata"]["name"],
                "namespace": NAMESPACE,
                "path": f"/{handler}",
                "port": https_port,
            }


def test_workload_webhooks_can_be_left_out_and_only_they_go(helm: Path) -> None:
    rendered = render(helm, None, "webhook.validateWorkloads=false")
    paths = {
        webhook["clientConfig"]["service"]["path"]
        for webhook in rendered.webhooks("ValidatingWebhookConfiguration")
    }
    assert paths == {f"/{names.VALIDATE_PODS}", f"/{names.VALIDATE_EPHEMERAL}"}
    assert len(rendered.webhooks("MutatingWebhookConfiguration")) == len(names.MUTATING_HANDLERS)


def test_webhooks_fail_closed_within_ten_seconds_by_default(defaults: Rendered) -> None:
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for webhook in defaults.webhooks(kind):
            assert webhook["failurePolicy"] == "Fail"
            assert webhook["timeoutSeconds"] == 10
            assert webhook["sideEffects"] == "None"
            assert webhook["admissionReviewVersions"] == ["v1"]
            assert webhook["matchPolicy"] == "Equivalent"


def test_only_mutators_are_reinvoked(defaults: Rendered) -> None:
    for webhook in defaults.webhooks("MutatingWebhookConfiguration"):
        assert webhook["reinvocationPolicy"] == "IfNeeded"
    for webhook in defaults.webhooks("ValidatingWebhookConfiguration"):
        assert "reinvocationPolicy" not in webhook


def test_audit_only_install_fails_open(helm: Path) -> None:
    rendered = render(helm, "audit-only.yaml")
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert {webhook["failurePolicy"] for webhook in rendered.webhooks(kind)} == {"Ignore"}
    policy = rendered.one("DigestPolicy")
    assert policy["spec"]["action"] == "Audit"


def _namespace_selectors(rendered: Rendered) -> Iterator[selectors.LabelSelector]:
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for webhook in rendered.webhooks(kind):
            yield selectors.parse(webhook["namespaceSelector"], "namespaceSelector")


def _namespace(name: str, **labels: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": name, **labels}


def test_kube_system_the_release_namespace_and_labelled_namespaces_are_never_sent(
    defaults: Rendered,
) -> None:
    for selector in _namespace_selectors(defaults):
        assert not selector.matches(_namespace("kube-system"))
        assert not selector.matches(_namespace(NAMESPACE))
        assert not selector.matches(_namespace("team-a", **{names.LABEL_EXCLUDE_NAMESPACE: "true"}))
        assert selector.matches(_namespace("team-a"))
        assert selector.matches(_namespace("team-a", **{names.LABEL_EXCLUDE_NAMESPACE: "false"}))


def test_namespace_selector_from_values_narrows_the_exclusions(helm: Path) -> None:
    rendered = render(helm, "everything.yaml")
    for selector in _namespace_selectors(rendered):
        assert selector.matches(_namespace("team-a", digestguard="on"))
        assert not selector.matches(_namespace("team-a"))
        assert not selector.matches(_namespace("monitoring", digestguard="on"))
        assert not selector.matches(_namespace(NAMESPACE, digestguard="on"))


def test_self_managed_configurations_leave_the_ca_bundle_to_the_webhook(
    defaults: Rendered,
) -> None:
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert "cert-manager.io/inject-ca-from" not in _annotations(defaults.one(kind))
        for webhook in defaults.webhooks(kind):
            assert "caBundle" not in webhook["clientConfig"]


def test_webhook_configurations_are_removed_first_on_uninstall(defaults: Rendered) -> None:
    hooks = [doc for doc in defaults.hooks if _annotations(doc)["helm.sh/hook"] == "pre-delete"]
    assert sorted(doc["kind"] for doc in hooks) == [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ]
    for hook in hooks:
        # Same kind and name as the live one, so before-hook-creation deletes it.
        assert hook["metadata"]["name"] == defaults.one(hook["kind"])["metadata"]["name"]
        assert hook["webhooks"] == []
        policy = _annotations(hook)["helm.sh/hook-delete-policy"].split(",")
        assert set(policy) == {"before-hook-creation", "hook-succeeded"}


def test_removing_first_can_be_turned_off_for_offline_renderers(helm: Path) -> None:
    rendered = render(helm, None, "webhook.removeFirstOnUninstall=false")
    assert all(_annotations(doc)["helm.sh/hook"] != "pre-delete" for doc in rendered.hooks)


# --------------------------------------------------------------------------
# The Deployment
# --------------------------------------------------------------------------


def test_container_runs_locked_down(defaults: Rendered) -> None:
    pod = defaults.pod_spec
    container = defaults.container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["runAsNonRoot"] is True
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["privileged"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod
    assert all("hostPath" not in volume for volume in pod["volumes"])


def test_self_managed_tls_is_written_to_an_in_memory_tmp(defaults: Rendered) -> None:
    tmp = next(m for m in defaults.container["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in defaults.pod_spec["volumes"] if v["name"] == tmp["name"])
    assert volume["emptyDir"]["medium"] == "Memory"
    assert defaults.flags["tls-dir"].startswith("/tmp/")


def test_self_managed_args_name_the_chart_objects(defaults: Rendered) -> None:
    flags = defaults.flags
    secret = defaults.one("Secret")
    assert flags["tls-mode"] == "self-managed"
    assert flags["tls-secret-name"] == secret["metadata"]["name"]
    assert flags["service-name"] == defaults.one("Service")["metadata"]["name"]
    assert (
        flags["mutating-webhook-configuration"]
        == defaults.one("MutatingWebhookConfiguration")["metadata"]["name"]
    )
    assert (
        flags["validating-webhook-configuration"]
        == defaults.one("ValidatingWebhookConfiguration")["metadata"]["name"]
    )
    # Created empty for the webhook to fill; the chart never sets data Helm could reset.
    assert secret["type"] == "Opaque"
    assert "data" not in secret
    assert "stringData" not in secret


def test_default_args_match_the_serve_contract(defaults: Rendered) -> None:
    assert defaults.flags == {
        "port": "8443",
        "health-port": "8080",
        "tls-mode": "self-managed",
        "tls-secret-name": f"{FULLNAME}-tls",
        "service-name": FULLNAME,
        "mutating-webhook-configuration": FULLNAME,
        "validating-webhook-configuration": FULLNAME,
        "tls-dir": "/tmp/tls",
        "resolve-deadline": "5s",
        "cache-ttl": "60s",
        "negative-cache-ttl": "5s",
        "mutability-cache-ttl": "10m",
        "cache-max-entries": "100000",
        "registry-workers": "16",
        "max-inflight": "200",
        "max-deciding": "32",
        "max-connections": "400",
        "max-body-bytes": "16777216",
        "shed-lag": "5ms",
        "shutdown-delay": "3s",
        "audit-interval": "10m",
        "audit-lease-name": f"{FULLNAME}-audit",
        "audit-lifecycle-preview": "false",
        "log-level": "info",
    }


def test_the_chart_defaults_of_the_limits_are_the_flag_defaults(defaults: Rendered) -> None:
    # One default for each: `helm install` and `digestguard serve` without flags agree.
    chosen = {
        "max-inflight",
        "max-deciding",
        "max-connections",
        "max-body-bytes",
        "shed-lag",
        "shutdown-delay",
        "resolve-deadline",
        "cache-ttl",
        "negative-cache-ttl",
        "mutability-cache-ttl",
        "cache-max-entries",
        "registry-workers",
        "log-level",
    }
    assert {f.name: f.default for f in cli.SERVE_FLAGS if f.name in chosen} == {
        name: defaults.flags[name] for name in chosen
    }


def test_the_namespace_comes_from_the_downward_api(defaults: Rendered) -> None:
    env = {item["name"]: item for item in defaults.container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert "AWS_REGION" not in env


def test_probes_and_ports_match_the_flags(defaults: Rendered) -> None:
    container = defaults.container
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {
        "https": int(defaults.flags["port"]),
        "health": int(defaults.flags["health-port"]),
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    service_ports = {p["name"]: p for p in defaults.one("Service")["spec"]["ports"]}
    assert service_ports["https"]["port"] == 443
    assert service_ports["https"]["targetPort"] == "https"
    assert service_ports["http-metrics"]["targetPort"] == "health"


def test_rollouts_never_take_a_replica_away_first(defaults: Rendered) -> None:
    strategy = defaults.one("Deployment")["spec"]["strategy"]
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_two_replicas_are_spread_and_protected_by_default(defaults: Rendered) -> None:
    deployment = defaults.one("Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["replicas"] == 2
    pdb = defaults.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    anti = defaults.pod_spec["affinity"]["podAntiAffinity"]
    (preferred,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert preferred["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    (spread,) = defaults.pod_spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["labelSelector"]["matchLabels"] == selector
    assert defaults.container["resources"]["requests"]
    assert defaults.container["resources"]["limits"]["memory"]
    assert "priorityClassName" not in defaults.pod_spec


def test_ha_off_renders_one_replica_and_no_disruption_budget(helm: Path) -> None:
    rendered = render(helm, "ha-off.yaml")
    assert rendered.one("Deployment")["spec"]["replicas"] == 1
    assert "PodDisruptionBudget" not in rendered.kinds()
    assert "affinity" not in rendered.pod_spec
    assert "topologySpreadConstraints" not in rendered.pod_spec


def test_a_single_replica_gets_no_budget_that_would_block_drains(helm: Path) -> None:
    rendered = render(helm, None, "replicaCount=1")
    assert "PodDisruptionBudget" not in rendered.kinds()


def test_no_autoscaler_by_default(defaults: Rendered) -> None:
    assert "HorizontalPodAutoscaler" not in defaults.kinds()


def test_the_autoscaler_scales_the_deployment_on_cpu_and_owns_its_replica_count(
    helm: Path,
) -> None:
    rendered = render(helm, None, "autoscaling.enabled=true", "autoscaling.maxReplicas=5")
    deployment = rendered.one("Deployment")
    assert "replicas" not in deployment["spec"], "helm upgrade must not undo the autoscaler"
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 70},
    }
    assert rendered.container["resources"]["requests"]["cpu"], "utilization needs a request"
    assert rendered.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_an_autoscaler_that_could_leave_one_replica_is_refused(helm: Path) -> None:
    message = refusal(
        helm, "--set", "autoscaling.enabled=true", "--set", "autoscaling.minReplicas=1"
    )
    assert "autoscaling.minReplicas must be at least 2" in message


def test_an_autoscaler_whose_maximum_is_below_its_minimum_is_refused(helm: Path) -> None:
    message = refusal(
        helm,
        "--set",
        "autoscaling.enabled=true",
        "--set",
        "autoscaling.minReplicas=3",
        "--set",
        "autoscaling.maxReplicas=2",
    )
    assert "autoscaling.maxReplicas (2) must be at least autoscaling.minReplicas (3)" in message


def test_every_option_reaches_the_pod(helm: Path) -> None:
    rendered = render(helm, "everything.yaml")
    pod, container = rendered.pod_spec, rendered.container
    assert container["image"].endswith("/digestguard@sha256:" + "0123456789abcdef" * 4)
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["AWS_REGION"] == "eu-west-1"
    assert env["EXTRA"] == "1"
    assert container["args"][-1] == "--shutdown-delay=5s"
    assert rendered.flags["resolve-deadline"] == "2500ms"
    assert rendered.flags["tls-secret-name"] == "guard-certificates"
    account = rendered.one("ServiceAccount")
    assert account["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/digestguard"
    }
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    hpa = rendered.one("HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 9)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 60


# --------------------------------------------------------------------------
# RBAC
# --------------------------------------------------------------------------


def _rules(role: dict[str, Any]) -> set[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    return {
        (group, resource, tuple(rule.get("resourceNames", ())), tuple(sorted(rule["verbs"])))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_cluster_role_reads_policies_and_namespaces_and_patches_only_its_own_webhooks(
    defaults: Rendered,
) -> None:
    admission = "admissionregistration.k8s.io"
    assert _rules(defaults.one("ClusterRole")) == {
        (names.GROUP, names.PLURAL, (), ("get", "list", "watch")),
        (names.GROUP, f"{names.PLURAL}/status", (), ("patch",)),
        ("", "namespaces", (), ("get", "list", "watch")),
        # One revision, one digest: list (never watch or get) pods; warn on owners.
        ("", "pods", (), ("list",)),
        ("", "events", (), ("create",)),
        # The audit's Warning Events name a Deployment by uid: get (never list) them.
        ("apps", "deployments", (), ("get",)),
        (
            admission,
            "mutatingwebhookconfigurations",
            (FULLNAME,),
            ("get", "list", "patch", "watch"),
        ),
        (
            admission,
            "validatingwebhookconfigurations",
            (FULLNAME,),
            ("get", "list", "patch", "watch"),
        ),
    }


def test_role_reads_only_its_own_secret_in_its_own_namespace(defaults: Rendered) -> None:
    role = defaults.one("Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert _rules(role) == {
        ("", "secrets", (f"{FULLNAME}-tls",), ("get", "patch")),
        # create cannot be limited by name; it does not allow reading.
        ("", "secrets", (), ("create",)),
        # The audit Lease, by name; create cannot be limited by name.
        ("coordination.k8s.io", "leases", (f"{FULLNAME}-audit",), ("get", "update")),
        ("coordination.k8s.io", "leases", (), ("create",)),
    }


def _secret_rules(role: dict[str, Any]) -> set[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    """The rules of `role` on Secrets (the audit's Lease rules are checked on their own)."""
    return {rule for rule in _rules(role) if rule[1] == "secrets"}


def test_pull_secrets_are_read_by_name_only_with_get(helm: Path) -> None:
    rendered = render(helm, "private-registries.yaml")
    role = rendered.one("Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert _secret_rules(role) == {
        ("", "secrets", (f"{FULLNAME}-tls",), ("get", "patch")),
        ("", "secrets", (), ("create",)),
        ("", "secrets", ("ghcr-readonly", "hub.creds"), ("get",)),
    }
    assert rendered.flags["registry-pull-secrets"] == "ghcr-readonly,hub.creds"
    assert rendered.flags["registry-pull-secrets-interval"] == "1m"


def test_no_pull_secret_flag_by_default(defaults: Rendered) -> None:
    # The Role then holds the TLS Secret's rules only (see above).
    assert "registry-pull-secrets" not in defaults.flags
    assert "registry-pull-secrets-interval" not in defaults.flags


@pytest.mark.parametrize("values_file", ["cert-manager.yaml", "existing-secret.yaml"])
def test_with_mounted_certificates_the_role_holds_only_the_pull_secrets(
    helm: Path, values_file: str
) -> None:
    rendered = render(helm, values_file, "registries.pullSecrets={regcred}")
    assert _secret_rules(rendered.one("Role")) == {("", "secrets", ("regcred",), ("get",))}
    binding = rendered.one("RoleBinding")
    assert binding["roleRef"]["name"] == rendered.one("Role")["metadata"]["name"]


def test_pod_pull_secrets_add_get_on_secrets_and_service_accounts_only_when_on(
    helm: Path, defaults: Rendered
) -> None:
    rendered = render(helm, "private-registries.yaml", "registries.podPullSecrets=true")
    added = _rules(rendered.one("ClusterRole")) - _rules(defaults.one("ClusterRole"))
    assert added == {("", "secrets", (), ("get",)), ("", "serviceaccounts", (), ("get",))}
    assert rendered.flags["pod-pull-secrets"] == "true"
    assert "pod-pull-secrets" not in defaults.flags
    assert not {rule[1] for rule in _rules(defaults.one("ClusterRole"))} & {
        "secrets",
        "serviceaccounts",
    }


def test_without_the_audit_there_is_no_lease_and_no_deployment_right(helm: Path) -> None:
    rendered = render(helm, "defaults.yaml", "audit.enabled=false")
    assert rendered.flags["audit-interval"] == "0"
    assert "audit-lease-name" not in rendered.flags
    assert {rule[1] for rule in _rules(rendered.one("Role"))} == {"secrets"}
    assert "deployments" not in {rule[1] for rule in _rules(rendered.one("ClusterRole"))}


def test_the_audit_interval_and_lifecycle_preview_reach_the_pod(helm: Path) -> None:
    flags = render(helm, "everything.yaml").flags
    assert (flags["audit-interval"], flags["audit-lifecycle-preview"]) == ("5m", "true")


def test_no_rule_uses_wildcards(helm: Path) -> None:
    for values_file in VALUES_FILES:
        rendered = render(helm, values_file)
        for kind in ("ClusterRole", "Role"):
            for role in rendered.all(kind):
                for rule in role["rules"]:
                    for field in ("apiGroups", "resources", "verbs"):
                        assert "*" not in rule[field], (values_file, kind, rule)


def test_bindings_grant_the_roles_to_the_webhook_service_account(defaults: Rendered) -> None:
    account = defaults.one("ServiceAccount")["metadata"]["name"]
    assert defaults.pod_spec["serviceAccountName"] == account
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = defaults.one(kind)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": defaults.one(role_kind)["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
        ]


@pytest.mark.parametrize("values_file", ["cert-manager.yaml", "existing-secret.yaml"])
def test_mounted_certificates_need_no_secret_or_webhook_rights(
    helm: Path, values_file: str
) -> None:
    rendered = render(helm, values_file)
    # The Role holds the audit Lease only: no Secret at all.
    assert {rule[1] for rule in _rules(rendered.one("Role"))} == {"leases"}
    resources = {rule[1] for rule in _rules(rendered.one("ClusterRole"))}
    assert resources == {
        names.PLURAL,
        f"{names.PLURAL}/status",
        "namespaces",
        "pods",
        "events",
        "deployments",
    }
    without_audit = render(helm, values_file, "audit.enabled=false")
    assert "Role" not in without_audit.kinds()
    assert "RoleBinding" not in without_audit.kinds()


# --------------------------------------------------------------------------
# TLS modes
# --------------------------------------------------------------------------


def _mounted_secret(rendered: Rendered) -> str:
    mount = next(m for m in rendered.container["volumeMounts"] if m["mountPath"] != "/tmp")
    volume = next(v for v in rendered.pod_spec["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] is True
    assert rendered.flags["tls-cert-file"] == f"{mount['mountPath']}/tls.crt"
    assert rendered.flags["tls-key-file"] == f"{mount['mountPath']}/tls.key"
    assert rendered.flags["tls-mode"] == "files"
    secret_name: str = volume["secret"]["secretName"]
    return secret_name


def test_cert_manager_issues_for_the_service_names_and_injects_the_ca(helm: Path) -> None:
    rendered = render(helm, "cert-manager.yaml")
    (serving,) = [c for c in rendered.all("Certificate") if not c["spec"].get("isCA")]
    assert serving["spec"]["dnsNames"] == list(certificates.service_dns_names(FULLNAME, NAMESPACE))
    assert "server auth" in serving["spec"]["usages"]
    assert _mounted_secret(rendered) == serving["spec"]["secretName"]
    ca_issuer = serving["spec"]["issuerRef"]["name"]
    assert ca_issuer in {issuer["metadata"]["name"] for issuer in rendered.all("Issuer")}
    injected = f"{NAMESPACE}/{serving['metadata']['name']}"
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert _annotations(rendered.one(kind))["cert-manager.io/inject-ca-from"] == injected
    assert "Secret" not in rendered.kinds()


def test_cert_manager_can_use_an_issuer_the_cluster_has(helm: Path) -> None:
    rendered = render(helm, "cert-manager-own-issuer.yaml")
    assert "Issuer" not in rendered.kinds()
    assert rendered.one("Certificate")["spec"]["issuerRef"] == {
        "name": "platform-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


def test_existing_secret_is_mounted_and_its_ca_bundle_set(helm: Path) -> None:
    rendered = render(helm, "existing-secret.yaml")
    values = yaml.safe_load((VALUES_DIR / "existing-secret.yaml").read_text())
    bundle = values["tls"]["existingSecret"]["caBundle"]
    assert _mounted_secret(rendered) == "digestguard-serving"
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for webhook in rendered.webhooks(kind):
            assert base64.b64decode(webhook["clientConfig"]["caBundle"]).decode() == bundle
    assert "Secret" not in rendered.kinds()
    assert "Certificate" not in rendered.kinds()


# --------------------------------------------------------------------------
# Registries other than ECR
# --------------------------------------------------------------------------


def test_no_registry_options_by_default(defaults: Rendered) -> None:
    assert "insecure-registries" not in defaults.flags
    assert "registry-ca-file" not in defaults.flags
    assert "ConfigMap" not in defaults.kinds()
    assert "annotations" not in defaults.one("Deployment")["spec"]["template"]["metadata"]


def test_registry_options_reach_the_registry_client(helm: Path, tmp_path: Path) -> None:
    rendered = render(helm, "private-registries.yaml")
    values = yaml.safe_load((VALUES_DIR / "private-registries.yaml").read_text())
    flags = rendered.flags
    assert flags["insecure-registries"].split(",") == values["registries"]["insecure"]

    # The CA file the flag names is the ConfigMap's key, mounted read-only.
    ca_file = Path(flags["registry-ca-file"])
    mount = next(m for m in rendered.container["volumeMounts"] if m["name"] == "registry-ca")
    assert ca_file.parent == Path(mount["mountPath"])
    assert mount["readOnly"] is True
    volume = next(v for v in rendered.pod_spec["volumes"] if v["name"] == "registry-ca")
    config_map = rendered.one("ConfigMap")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    bundle = config_map["data"][ca_file.name]
    assert bundle.strip() == values["registries"]["caBundle"].strip()

    # What the pod would see is what the webhook's registry client accepts.
    (tmp_path / ca_file.name).write_text(bundle)
    oci.OciClient(
        insecure_registries=flags["insecure-registries"].split(","),
        ca_file=str(tmp_path / ca_file.name),
    )


def test_a_new_registry_ca_rolls_the_pods(helm: Path) -> None:
    # The webhook reads the bundle once, at start: the pod template carries its hash.
    template = render(helm, "private-registries.yaml").one("Deployment")["spec"]["template"]
    values = yaml.safe_load((VALUES_DIR / "private-registries.yaml").read_text())
    bundle = values["registries"]["caBundle"].encode()
    assert template["metadata"]["annotations"] == {
        "example.com/team": "platform",
        "checksum/registry-ca": hashlib.sha256(bundle).hexdigest(),
    }


# --------------------------------------------------------------------------
# Policies and the CRD
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
    return loaded


def test_crd_names_the_policy_resource(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == names.POLICY_RESOURCE
    assert spec["group"] == names.GROUP
    assert spec["scope"] == "Cluster"
    assert spec["names"]["kind"] == names.KIND
    assert spec["names"]["plural"] == names.PLURAL
    assert spec["names"]["shortNames"] == [names.SHORT_NAME]
    (version,) = spec["versions"]
    assert version["name"] == names.VERSION
    assert version["served"]
    assert version["storage"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Action", "Ready", "Age"]


def _policy_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_crd_schema_is_the_policy_contract(crd: dict[str, Any]) -> None:
    spec = _policy_schema(crd)["properties"]["spec"]
    fields = spec["properties"]
    assert set(fields) == {
        "namespaceSelector",
        "podSelector",
        "images",
        "excludeImages",
        "action",
        "keepTag",
        "allowImmutableTags",
        "allowPullThroughFirstPull",
        "onResolveError",
        "maxStale",
        "pinScope",
    }
    assert spec["required"] == ["images"]
    assert fields["images"]["minItems"] == 1
    assert fields["excludeImages"]["items"]["type"] == "string"
    assert fields["action"]["enum"] == [action.value for action in policies.Action]
    assert fields["action"]["default"] == "Mutate"
    assert fields["keepTag"]["default"] is True
    assert fields["pinScope"]["enum"] == [value.value for value in policies.PinScope]
    assert fields["pinScope"]["default"] == policies.PinScope.ROLLOUT.value
    assert fields["allowImmutableTags"]["default"] is False
    assert fields["allowPullThroughFirstPull"]["default"] is False
    assert fields["onResolveError"]["enum"] == [value.value for value in policies.OnResolveError]
    assert fields["onResolveError"]["default"] == "Deny"
    assert fields["maxStale"]["default"] == policies.DEFAULT_MAX_STALE
    assert fields["maxStale"]["pattern"] == r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$|^0$"
    for selector in ("namespaceSelector", "podSelector"):
        operators = fields[selector]["properties"]["matchExpressions"]["items"]["properties"]
        assert set(operators["operator"]["enum"]) == selectors.OPERATORS
    status = _policy_schema(crd)["properties"]["status"]["properties"]
    assert set(status) == {"observedGeneration", "conditions"}


@pytest.mark.parametrize(
    "text", ["0", "0s", "10m", "1h30m", "250ms", "1.5h", "30s1m", "", "10", "-5m", "10d", "5us"]
)
def test_crd_accepts_exactly_the_durations_the_webhook_parses(
    crd: dict[str, Any], text: str
) -> None:
    pattern = _policy_schema(crd)["properties"]["spec"]["properties"]["maxStale"]["pattern"]
    try:
        durations.parse_seconds(text)
        parses = True
    except errors.InvalidDuration:
        parses = False
    # JSON Schema patterns are unanchored searches (the pattern anchors itself).
    assert (re.search(pattern, text) is not None) is parses


def test_default_policy_is_one_the_webhook_accepts(defaults: Rendered, crd: dict[str, Any]) -> None:
    policy = defaults.one("DigestPolicy")
    assert policy["apiVersion"] == f"{names.GROUP}/{names.VERSION}"
    assert "namespace" not in policy["metadata"]
    parsed = policies.parse(policy["metadata"]["name"], 1, policy["spec"])
    assert parsed.action is policies.Action.MUTATE
    assert set(policy["spec"]) <= set(_policy_schema(crd)["properties"]["spec"]["properties"])
    for image in (
        "111122223333.dkr.ecr.eu-west-1.amazonaws.com/shop/api",
        "111122223333.dkr.ecr-fips.us-east-1.amazonaws.com/shop/api",
        "111122223333.dkr-ecr.eu-west-1.on.aws/shop/api",
        "111122223333.dkr.ecr.cn-north-1.amazonaws.com.cn/shop/api",
    ):
        assert parsed.covers(image), image
    assert not parsed.covers("docker.io/library/nginx")


def test_default_policy_can_be_left_out(helm: Path) -> None:
    assert "DigestPolicy" not in render(helm, None, "defaultPolicy.enabled=false").kinds()


# --------------------------------------------------------------------------
# Optional objects
# --------------------------------------------------------------------------


def test_optional_objects_are_off_by_default(defaults: Rendered) -> None:
    assert {"NetworkPolicy", "ServiceMonitor", "Certificate", "Issuer"} & defaults.kinds() == set()


def test_network_policy_keeps_the_webhook_port_open_and_limits_metrics(helm: Path) -> None:
    rendered = render(helm, "everything.yaml")
    policy = rendered.one("NetworkPolicy")["spec"]
    assert (
        policy["podSelector"]["matchLabels"]
        == (rendered.one("Deployment")["spec"]["selector"]["matchLabels"])
    )
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["ingress"]}
    assert "from" not in by_port["https"]
    assert by_port["health"]["from"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}


def test_restricted_egress_lets_plain_http_registries_through(helm: Path) -> None:
    def egress_ports(*sets: str) -> list[int]:
        rendered = render(helm, "private-registries.yaml", "networkPolicy.enabled=true", *sets)
        rules = rendered.one("NetworkPolicy")["spec"]["egress"]
        return [port["port"] for port in rules[-1]["ports"]]

    # private-registries.yaml: registry.tools.svc.cluster.local:5000 and 10.100.0.20:5000.
    assert egress_ports("networkPolicy.egress.enabled=true") == [443, 6443, 5000]
    unnamed = "registries.insecure={registry.tools.svc,[fd00::20]:8443,10.0.0.9:443}"
    assert egress_ports("networkPolicy.egress.enabled=true", unnamed) == [443, 6443, 80, 8443]


def test_service_monitor_scrapes_the_metrics_port(helm: Path) -> None:
    rendered = render(helm, "everything.yaml")
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_helm_test_pod_checks_readiness_through_the_service(defaults: Rendered) -> None:
    (pod,) = [doc for doc in defaults.hooks if _annotations(doc)["helm.sh/hook"] == "test"]
    (container,) = pod["spec"]["containers"]
    script = container["command"][-1]
    assert container["command"][0] == "python3"
    assert f"{FULLNAME}.{NAMESPACE}.svc" in script
    assert "/readyz" in script
    assert container["image"] == defaults.container["image"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize(
    ("values_file", "secret", "key"),
    [
        ("defaults.yaml", f"{FULLNAME}-tls", secret.SECRET_BUNDLE),
        ("cert-manager.yaml", f"{FULLNAME}-serving-cert", "ca.crt"),
    ],
)
def test_helm_test_verifies_the_certificate_with_only_the_ca_of_the_tls_secret(
    helm: Path, values_file: str, secret: str, key: str
) -> None:
    rendered = render(helm, values_file)
    (pod,) = [doc for doc in rendered.hooks if _annotations(doc)["helm.sh/hook"] == "test"]
    (container,) = pod["spec"]["containers"]
    (volume,) = pod["spec"]["volumes"]
    assert volume["secret"]["secretName"] == secret
    assert volume["secret"]["items"] == [{"key": key, "path": "ca.crt"}]
    (mount,) = container["volumeMounts"]
    assert f'cafile="{mount["mountPath"]}/ca.crt"' in container["command"][-1]


def test_helm_test_of_an_existing_secret_trusts_the_given_ca_bundle(helm: Path) -> None:
    rendered = render(helm, "existing-secret.yaml")
    values = yaml.safe_load((VALUES_DIR / "existing-secret.yaml").read_text())
    (pod,) = [doc for doc in rendered.hooks if _annotations(doc)["helm.sh/hook"] == "test"]
    script = pod["spec"]["containers"][0]["command"][-1]
    assert "volumes" not in pod["spec"]
    assert json.dumps(values["tls"]["existingSecret"]["caBundle"].strip()) in script


# --------------------------------------------------------------------------
# Values checking
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("foo=bar", "additional properties 'foo' not allowed"),
        ("webhook.failurePolicy=Maybe", "value must be one of 'Fail', 'Ignore'"),
        ("webhook.timeout=5", "additional properties 'timeout' not allowed"),
        ("webhook.timeoutSeconds=31", "timeoutSeconds"),
        ("tls.mode=selfSigned", "tls/mode"),
        ("defaultPolicy.spec.action=Block", "defaultPolicy/spec/action"),
        ("defaultPolicy.spec.maxStale=10d", "maxStale"),
        ("replicaCount=0", "replicaCount"),
        ("image.digest=latest", "image/digest"),
        ("registries.insecure={http://registry.local/}", "registries/insecure/0"),
    ],
)
def test_schema_rejects_bad_values_with_a_clear_message(
    helm: Path, assignment: str, message: str
) -> None:
    assert message in refusal(helm, "--set", assignment)


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (
            ["tls.mode=certManager", "tls.certManager.createIssuer=false"],
            "tls.mode=certManager needs an issuer",
        ),
        (["tls.mode=existingSecret"], "needs tls.existingSecret.name"),
        (
            [
                "tls.mode=existingSecret",
                "tls.existingSecret.name=s",
                "tls.existingSecret.caBundle=TFM=",
            ],
            "the PEM (not base64)",
        ),
        (["webhook.timeoutSeconds=6"], "must exceed resolver.deadline (5s) plus 1s"),
        (["resolver.deadline=9500ms"], "must exceed resolver.deadline (9500ms) plus 1s"),
        (["containerPorts.health=8443"], "containerPorts.webhook and containerPorts.health"),
        (["serviceAccount.create=false"], "serviceAccount.name is required"),
        (["registries.caBundle=ca.pem"], "registries.caBundle must be PEM"),
        (["registries.pullSecrets={dg-digestguard-tls}"], "the webhook's TLS Secret"),
        (["registries.pullSecrets={Not_A_Name}"], "'Not_A_Name' does not match pattern"),
    ],
)  # fmt: skip
def test_combinations_that_cannot_work_fail_at_render_time(
    helm: Path, assignments: list[str], message: str
) -> None:
    args = [arg for assignment in assignments for arg in ("--set", assignment)]
    assert message in refusal(helm, *args)


def test_the_image_must_be_named_since_none_is_published(helm: Path) -> None:
    message = refusal(helm, image=False)
    assert "image.repository is required" in message
    assert "make image" in message
    rendered = render(helm, None, "image.tag=1.2.3")
    assert rendered.container["image"] == (
        "111122223333.dkr.ecr.us-east-1.amazonaws.com/digestguard:1.2.3"
    )


def test_every_value_is_documented_where_it_is_declared() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    # (indent, documented) of the keys enclosing the current line.
    enclosing: list[tuple[int, bool]] = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):(.*)$", line)
        if not match:
            continue
        indent = len(match[1])
        while enclosing and enclosing[-1][0] >= indent:
            enclosing.pop()
        documented = number > 0 and lines[number - 1].strip().startswith("#")
        # A leaf needs its own comment, unless it is inside a value documented whole
        # (e.g. the fields of `resources`); a parent mapping's children carry theirs.
        inside_documented = any(is_documented for _, is_documented in enclosing)
        if match[3].strip() and not documented and not inside_documented:
            undocumented.append(f"values.yaml:{number + 1}: {line.strip()}")
        enclosing.append((indent, documented))
    assert not undocumented, "\n".join(undocumented)


def _schema_paths(
    schema: dict[str, Any], values: Any, path: str = ""
) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(path, schema) for every value in `values`; schema None where none declares it."""
    yield path, schema
    if isinstance(values, dict) and schema.get("additionalProperties") is False:
        for key, value in values.items():
            child = schema.get("properties", {}).get(key)
            if child is None:
                yield f"{path}.{key}", None
            else:
                yield from _schema_paths(child, value, f"{path}.{key}")


def test_schema_declares_every_value_and_closes_every_chart_object() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # Kubernetes types passed through as they are; the apiserver validates them.
    passthrough = {
        ".podSecurityContext",
        ".securityContext",
        ".affinity",
        ".tolerations",
        ".networkPolicy.metricsFrom",
    }
    for path, declared in _schema_paths(schema, values):
        assert declared is not None, f"{path} is not in values.schema.json"
        is_map = isinstance(declared.get("additionalProperties"), dict)
        if declared.get("type") == "object" and path not in passthrough and not is_map:
            assert declared.get("additionalProperties") is False, f"{path} is not closed"


def _leaf_paths(values: Any, path: str = "") -> Iterator[str]:
    # Whole Kubernetes objects are one value each, however many fields they have.
    whole = {"resources", "podSecurityContext", "securityContext"}
    if isinstance(values, dict) and values and path not in whole:
        for key, value in values.items():
            yield from _leaf_paths(value, f"{path}.{key}" if path else key)
    else:
        yield path


def test_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    # The table `make chart-docs` renders: | key | type | `default` | description |
    listed = set(re.findall(r"^\| ([\w.]+) \| \w+ \| `", readme, re.MULTILINE))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    leaves = set(_leaf_paths(values))
    # A value documented as a whole (`defaultPolicy.spec`) covers the values inside it.
    uncovered = {
        leaf
        for leaf in leaves
        if not any(leaf == key or leaf.startswith(f"{key}.") for key in listed)
    }
    assert uncovered == set()
    assert {
        key
        for key in listed
        if not any(leaf == key or leaf.startswith(f"{key}.") for leaf in leaves)
    } == set()


def _declared_paths(schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Every property path the schema declares (not inside a map or a list)."""
    for key, child in schema.get("properties", {}).items():
        child_path = f"{path}.{key}" if path else key
        yield child_path
        if isinstance(child, dict) and child.get("type") == "object":
            yield from _declared_paths(child, child_path)


def test_every_value_the_schema_declares_is_in_values_yaml() -> None:
    # The other way round from the test above: no schema entry for a value that is gone.
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # `global` is Helm's, set by parent charts; the rest must have a default here.
    absent = []
    for path in _declared_paths(schema):
        if path == "global" or path.startswith("global."):
            continue
        node: Any = values
        for key in path.split("."):
            if node == {}:
                break  # an object left empty by default: its fields are optional
            if not isinstance(node, dict) or key not in node:
                absent.append(path)
                break
            node = node[key]
    assert absent == []
