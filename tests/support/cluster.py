"""Driving the local control plane from tests and scripts: the pieces around `ControlPlane`.

- `loopback_tls`: a CA and a serving certificate for `https://127.0.0.1:<port>`, so
  the apiserver can call webhooks that run as plain local processes;
- `render_webhook_configurations` / `point_at` / `Registration`: the chart's webhook
  configurations, as the real Helm renders them, with each `clientConfig.service`
  replaced by a URL (no pods run here, so Services route nowhere);
- `install_crd`, `create_namespace`, `apply_policy`, …: objects the tests need, created
  through the API and waited for;
- `call`: one API request, answered as (status, JSON body, warnings) whether the
  apiserver admitted it or not, which is what admission tests assert on.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import json
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client

from webhook import names
from webhook.tls import certificates

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "digestguard"
CRD_FILE = CHART / "crds" / "digestpolicies.digestguard.io.yaml"
WEBHOOK_TEMPLATE = "templates/webhookconfigurations.yaml"
# The one chart value without a default (no image is published), for every render and install.
IMAGE_VALUES = Path(__file__).resolve().parent / "chart-image.yaml"
DEFAULT_POLICY_TEMPLATE = "templates/defaultpolicy.yaml"

SCOPE_LABEL = "e2e.digestguard.io/webhook"
"""Namespaces a locally registered webhook sees carry this label, valued its release name."""

T = TypeVar("T")


def unique(prefix: str) -> str:
    """A name no other test (nor an earlier run on this control plane) has used."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def eventually(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll `probe` until it returns something truthy; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


# --------------------------------------------------------------------------
# TLS for webhooks served on loopback
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoopbackTLS:
    cert_file: Path
    key_file: Path
    ca_file: Path

    @property
    def ca_bundle(self) -> str:
        """The CA as a webhook configuration's `caBundle` wants it (base64 of the PEM)."""
        return base64.b64encode(self.ca_file.read_bytes()).decode()


def loopback_tls(directory: Path) -> LoopbackTLS:
    """A CA and a serving certificate for 127.0.0.1 and localhost, made by the product's
    certificate module: the apiserver checks the IP of a webhook URL against IP SANs."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca = certificates.create_ca("digestguard-loopback-ca", now)
    serving = certificates.create_serving_cert(
        ca, ["127.0.0.1", "localhost"], now, datetime.timedelta(days=2)
    )
    tls = LoopbackTLS(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")
    tls.ca_file.write_bytes(ca.cert_pem)
    tls.cert_file.write_bytes(serving.cert_pem)
    tls.key_file.write_bytes(serving.key_pem)
    tls.key_file.chmod(0o600)
    return tls


# --------------------------------------------------------------------------
# The chart's webhook configurations, pointed at a local URL
# --------------------------------------------------------------------------


def render_chart(
    helm: Path,
    *,
    release: str,
    namespace: str,
    values: Mapping[str, Any],
    templates: Iterable[str],
) -> list[dict[str, Any]]:
    """`helm template` of some of the chart's templates, as objects."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values_file:
        json.dump(values, values_file)  # JSON is YAML
        values_file.flush()
        only = [arg for template in templates for arg in ("--show-only", template)]
        result = subprocess.run(
            [
                str(helm),
                "template",
                release,
                str(CHART),
                "--namespace",
                namespace,
                "--values",
                str(IMAGE_VALUES),
                "--values",
                values_file.name,
                *only,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def scoped_values(release: str, **webhook: Any) -> dict[str, Any]:
    """Chart values whose webhooks see only namespaces labelled `SCOPE_LABEL=release`,
    so that several registrations share one control plane without meeting."""
    return {
        "webhook": {"namespaceSelector": {"matchLabels": {SCOPE_LABEL: release}}, **webhook},
    }


def render_webhook_configurations(
    helm: Path, *, release: str, namespace: str, values: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The chart's Mutating- and ValidatingWebhookConfiguration for these values."""
    return render_chart(
        helm, release=release, namespace=namespace, values=values, templates=[WEBHOOK_TEMPLATE]
    )


def point_at(
    configurations: Iterable[Mapping[str, Any]], base_url: str, ca_bundle: str
) -> list[dict[str, Any]]:
    """Copies whose webhooks call `base_url` + the path the chart gave their Service."""
    pointed = []
    for configuration in configurations:
        copy = json.loads(json.dumps(configuration))
        for webhook in copy["webhooks"]:
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {"url": base_url + path, "caBundle": ca_bundle}
        pointed.append(copy)
    return pointed


def webhook_paths(configurations: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Webhook name → URL path, from configurations as rendered or pointed."""
    paths = {}
    for configuration in configurations:
        for webhook in configuration["webhooks"]:
            config = webhook["clientConfig"]
            url = config.get("url")
            paths[webhook["name"]] = (
                "/" + url.split("/", 3)[3] if url else config["service"]["path"]
            )
    return paths


_CONFIGURATION_CALLS = {
    "MutatingWebhookConfiguration": (
        "create_mutating_webhook_configuration",
        "replace_mutating_webhook_configuration",
        "read_mutating_webhook_configuration",
        "delete_mutating_webhook_configuration",
    ),
    "ValidatingWebhookConfiguration": (
        "create_validating_webhook_configuration",
        "replace_validating_webhook_configuration",
        "read_validating_webhook_configuration",
        "delete_validating_webhook_configuration",
    ),
}


class Registration:
    """Webhook configurations created in the apiserver, replaced on `update`, deleted on exit."""

    def __init__(self, api: client.ApiClient, configurations: Iterable[Mapping[str, Any]]):
        self.admission = client.AdmissionregistrationV1Api(api)
        self.configurations = [dict(c) for c in configurations]

    def __enter__(self) -> Registration:
        self.apply(self.configurations)
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()

    def apply(self, configurations: Iterable[Mapping[str, Any]]) -> None:
        self.configurations = [dict(c) for c in configurations]
        for configuration in self.configurations:
            create, replace, read, _ = _CONFIGURATION_CALLS[configuration["kind"]]
            name = configuration["metadata"]["name"]
            try:
                getattr(self.admission, create)(configuration, _preload_content=False)
            except client.ApiException as error:
                if error.status != 409:
                    raise
                current = json.loads(
                    getattr(self.admission, read)(name, _preload_content=False).data
                )
                body = json.loads(json.dumps(configuration))
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                getattr(self.admission, replace)(name, body, _preload_content=False)

    def remove(self) -> None:
        for configuration in self.configurations:
            delete = _CONFIGURATION_CALLS[configuration["kind"]][3]
            with contextlib.suppress(client.ApiException):
                getattr(self.admission, delete)(configuration["metadata"]["name"])


# --------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the apiserver answered one request with, admitted or not."""

    status: int
    body: dict[str, Any]
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        return str(self.body.get("message", ""))


_WARNING = re.compile(r'\d{3} \S+ "((?:[^"\\]|\\.)*)"')


def warnings_in(headers: Any) -> tuple[str, ...]:
    """The texts of the `Warning` headers (RFC 7234 form, as the apiserver sends them)."""
    if headers is None:
        return ()
    values = headers.getlist("Warning") if hasattr(headers, "getlist") else []
    if not values and headers.get("Warning"):
        values = [headers["Warning"]]
    texts = []
    for value in values:
        for match in _WARNING.finditer(value):
            texts.append(re.sub(r"\\(.)", r"\1", match.group(1)))
    return tuple(texts)


def call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Answer:
    """Make one request through a generated client method and return what came back."""
    try:
        response = method(*args, _preload_content=False, **kwargs)
    except client.ApiException as error:
        try:
            body = json.loads(error.body or "{}")
        except ValueError:
            body = {"message": str(error.body)}
        return Answer(int(error.status), body, warnings_in(error.headers))
    return Answer(int(response.status), json.loads(response.data), warnings_in(response.headers))


def install_crd(api: client.ApiClient, path: Path = CRD_FILE, timeout: float = 30.0) -> str:
    """Create the CRD in `path` (unless it exists) and wait until it is established."""
    crd = yaml.safe_load(path.read_text())
    extensions = client.ApiextensionsV1Api(api)
    try:
        extensions.create_custom_resource_definition(crd, _preload_content=False)
    except client.ApiException as error:
        if error.status != 409:
            raise
    name = str(crd["metadata"]["name"])

    def established() -> bool:
        current = json.loads(
            extensions.read_custom_resource_definition(name, _preload_content=False).data
        )
        return any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in (current.get("status") or {}).get("conditions") or []
        )

    eventually(f"CRD {name} to be established", established, timeout)
    return name


def create_namespace(
    api: client.ApiClient, name: str, labels: Mapping[str, str] | None = None
) -> None:
    """Create a namespace and wait for its `default` ServiceAccount (pods need it)."""
    core = client.CoreV1Api(api)
    body = {"metadata": {"name": name, "labels": dict(labels or {})}}
    core.create_namespace(body, _preload_content=False)

    def has_service_account() -> bool:
        return call(core.read_namespaced_service_account, "default", name).ok

    eventually(f"ServiceAccount {name}/default", has_service_account, 60)


def delete_namespace(api: client.ApiClient, name: str) -> None:
    """Start deleting a namespace (without waiting: nothing else uses the name)."""
    with contextlib.suppress(client.ApiException):
        client.CoreV1Api(api).delete_namespace(name, _preload_content=False)


def policy(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{names.GROUP}/{names.VERSION}",
        "kind": names.KIND,
        "metadata": {"name": name},
        "spec": dict(spec),
    }


def _policies(api: client.ApiClient) -> tuple[client.CustomObjectsApi, tuple[str, str, str]]:
    return client.CustomObjectsApi(api), (names.GROUP, names.VERSION, names.PLURAL)


def read_policy(api: client.ApiClient, name: str) -> dict[str, Any]:
    custom, resource = _policies(api)
    answer = call(custom.get_cluster_custom_object, *resource, name)
    if not answer.ok:
        raise RuntimeError(f"cannot read DigestPolicy {name}: {answer.message}")
    return answer.body


def create_policy(api: client.ApiClient, name: str, spec: Mapping[str, Any]) -> Answer:
    custom, resource = _policies(api)
    return call(custom.create_cluster_custom_object, *resource, policy(name, spec))


def replace_policy_spec(api: client.ApiClient, name: str, spec: Mapping[str, Any]) -> Answer:
    custom, resource = _policies(api)
    current = read_policy(api, name)
    current["spec"] = dict(spec)
    return call(custom.replace_cluster_custom_object, *resource, name, current)


def delete_policy(api: client.ApiClient, name: str) -> None:
    custom, resource = _policies(api)
    call(custom.delete_cluster_custom_object, *resource, name)


def ready_condition(current: Mapping[str, Any]) -> dict[str, Any] | None:
    """The policy's Ready condition, once a webhook has reported on its current generation."""
    status = current.get("status") or {}
    if status.get("observedGeneration") != current["metadata"].get("generation"):
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return dict(condition)
    return None


def wait_for_policy(api: client.ApiClient, name: str, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until a webhook reported on the policy's current generation; its Ready condition.

    A webhook reports only after its policy index holds that generation, so once this
    returns the webhook that reported decides by it."""
    return eventually(
        f"DigestPolicy {name} to be reported on",
        lambda: ready_condition(read_policy(api, name)),
        timeout,
    )


def apply_policy(
    api: client.ApiClient, name: str, spec: Mapping[str, Any], timeout: float = 30.0
) -> dict[str, Any]:
    """Create (or replace) an accepted policy and wait until the webhook enforces it."""
    answer = create_policy(api, name, spec)
    if answer.status == 409:
        answer = replace_policy_spec(api, name, spec)
    if not answer.ok:
        raise RuntimeError(f"DigestPolicy {name} refused: {answer.message}")
    condition = wait_for_policy(api, name, timeout)
    if condition.get("status") != "True":
        raise RuntimeError(f"DigestPolicy {name} not accepted: {condition.get('message')}")
    return condition


@contextlib.contextmanager
def policies(api: client.ApiClient, specs: Mapping[str, Mapping[str, Any]]) -> Iterator[None]:
    """Policies that exist (and are enforced) for the duration of a `with` block."""
    try:
        for name, spec in specs.items():
            apply_policy(api, name, spec)
        yield
    finally:
        for name in specs:
            delete_policy(api, name)


def only_in(namespace: str) -> dict[str, Any]:
    """A namespaceSelector (for a policy or a webhook) that selects exactly one namespace."""
    return {"matchLabels": {"kubernetes.io/metadata.name": namespace}}


def pod(name: str, *images: str, **metadata: Any) -> dict[str, Any]:
    """A pod with one container per image (`c0`, `c1`, …) that never needs a node."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **metadata},
        "spec": {
            "containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)],
            "terminationGracePeriodSeconds": 0,
        },
    }


def docker_registry_secret(name: str, host: str, user: str, password: str) -> dict[str, Any]:
    """The Secret `kubectl create secret docker-registry NAME --docker-server=HOST
    --docker-username=USER --docker-password=PASSWORD` makes."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config = {"auths": {host: {"username": user, "password": password, "auth": auth}}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }


def images_of(obj: Mapping[str, Any], list_name: str = "containers") -> dict[str, str]:
    """Container name → image of one container list of a pod (or a pod spec's holder)."""
    spec = obj.get("spec", {})
    return {c["name"]: c["image"] for c in spec.get(list_name) or []}


def original_images(obj: Mapping[str, Any]) -> dict[str, str] | None:
    annotations = obj.get("metadata", {}).get("annotations") or {}
    raw = annotations.get(names.ANNOTATION_ORIGINAL_IMAGES)
    return json.loads(raw) if raw is not None else None


# --------------------------------------------------------------------------
# The webhook as a local process, registered as the chart would register it
# --------------------------------------------------------------------------


class LocalWebhook:
    """`digestguard serve` as a local process, called by the apiserver through the chart's
    webhook configurations (rendered by Helm for `release`, pointed at the process).

    The configurations see only namespaces labelled `scope` (see `scoped_values`);
    `values` are further chart values (`webhook.failurePolicy`, `resolver.deadline`…).
    """

    def __init__(
        self,
        *,
        api: client.ApiClient,
        kubeconfig: Path,
        helm: Path,
        tls: LoopbackTLS,
        release: str,
        ecr_endpoint_url: str,
        workdir: Path,
        namespace: str = "digestguard",
        webhook_values: Mapping[str, Any] | None = None,
        values: Mapping[str, Any] | None = None,
        extra_args: Iterable[str] = (),
    ) -> None:
        from tests.support.webhook_process import WebhookProcess

        self.api = api
        self.helm = helm
        self.tls = tls
        self.release = release
        self.namespace = namespace
        self.webhook_values = dict(webhook_values or {})
        self.values = dict(values or {})
        self.process = WebhookProcess(
            kubeconfig=kubeconfig,
            namespace=namespace,
            workdir=workdir,
            ecr_endpoint_url=ecr_endpoint_url,
            certfile=tls.cert_file,
            keyfile=tls.key_file,
            cafile=tls.ca_file,
            extra_args=list(extra_args),
        )
        self.registration = Registration(api, [])

    @property
    def scope(self) -> dict[str, str]:
        """The labels a namespace needs for these webhook configurations to see it."""
        return {SCOPE_LABEL: self.release}

    def configurations(self, **webhook_values: Any) -> list[dict[str, Any]]:
        values = {**self.values, **scoped_values(self.release, **self.webhook_values)}
        values["webhook"].update(webhook_values)
        rendered = render_webhook_configurations(
            self.helm, release=self.release, namespace=self.namespace, values=values
        )
        return point_at(rendered, self.process.base_url, self.tls.ca_bundle)

    def register(self, **webhook_values: Any) -> None:
        """(Re-)register the configurations, with chart `webhook.*` values overridden."""
        self.registration.apply(self.configurations(**webhook_values))

    def start(self) -> LocalWebhook:
        self.process.start()
        try:
            self.register()
        except BaseException:
            self.process.stop()
            raise
        return self

    def stop(self) -> None:
        self.registration.remove()
        self.process.stop()

    def __enter__(self) -> LocalWebhook:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
