"""Capture real AdmissionReview requests from the local kube-apiserver as golden files.

Starts the local control plane (binaries from hack/envtest-assets.sh or
KUBEBUILDER_ASSETS), registers a webhook that records every review it is sent and
allows it, performs the operations below in namespace `golden`, and writes each
review, exactly as the apiserver sent it, to tests/golden/<name>.json:

    pod-create                  a pod with an init container, an ECR and a Docker Hub image
    pod-update                  the same pod with one container's image changed
    pod-ephemeralcontainers     an ephemeral container added (what `kubectl debug` does)
    deployment-create           a Deployment
    pod-create-from-replicaset  a pod the Deployment's ReplicaSet made (no name, no namespace)
    cronjob-create              a CronJob

ECR images are in repositories `golden/*` of the account and region the tests' ECR
emulator answers as; tests seed those (or rewrite them) before replaying a review.

    python hack/capture_reviews.py [--output tests/golden]
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client  # noqa: E402

from tests.support import cluster, ecr_emulator  # noqa: E402
from tests.support.controlplane import ControlPlane, find_assets  # noqa: E402

NAMESPACE = "golden"
REGISTRY = ecr_emulator.registry_host()
CONFIGURATION = "capture-reviews"


def image(repository: str, tag: str) -> str:
    return f"{REGISTRY}/golden/{repository}:{tag}"


class Recorder:
    """An HTTPS webhook that allows everything and keeps every review it is sent."""

    def __init__(self, tls: cluster.LoopbackTLS) -> None:
        recorder = self
        self.reviews: list[dict[str, Any]] = []
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with recorder.lock:
                    recorder.reviews.append(review)
                answer = json.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {"uid": review["request"]["uid"], "allowed": True},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}/capture"

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def take(
        self, match: Callable[[Mapping[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        """The latest recorded review whose request matches (waiting for it)."""

        def find() -> dict[str, Any] | None:
            with self.lock:
                found = [r for r in self.reviews if match(r["request"])]
            return found[-1] if found else None

        return cluster.eventually("the review to be recorded", find, timeout)


def rule(group: str, resource: str, operations: list[str]) -> dict[str, Any]:
    return {
        "apiGroups": [group],
        "apiVersions": ["v1"],
        "operations": operations,
        "resources": [resource],
        "scope": "Namespaced",
    }


def configuration(url: str, ca_bundle: str) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION},
        "webhooks": [
            {
                "name": "capture.digestguard.io",
                "clientConfig": {"url": url, "caBundle": ca_bundle},
                "rules": [
                    rule("", "pods", ["CREATE", "UPDATE"]),
                    rule("", "pods/ephemeralcontainers", ["UPDATE"]),
                    rule("apps", "deployments", ["CREATE", "UPDATE"]),
                    rule("batch", "cronjobs", ["CREATE", "UPDATE"]),
                ],
                "namespaceSelector": cluster.only_in(NAMESPACE),
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }
        ],
    }


def is_(resource: str, operation: str, name: str | None, subresource: str | None = None) -> Any:
    def match(request: Mapping[str, Any]) -> bool:
        return (
            request["resource"]["resource"] == resource
            and request["operation"] == operation
            and request.get("subResource") == subresource
            and not request.get("dryRun")
            and (name is None or request.get("name") == name)
        )

    return match


def capture(plane: ControlPlane, tls: cluster.LoopbackTLS) -> Iterator[tuple[str, dict[str, Any]]]:
    with plane.new_api_client() as api, Recorder(tls) as recorder:
        core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
        cluster.create_namespace(api, NAMESPACE)
        with cluster.Registration(api, [configuration(recorder.url, tls.ca_bundle)]):
            probe = cluster.pod("probe", "busybox")
            cluster.eventually(
                "the capturing webhook to be called",
                lambda: (
                    cluster.call(core.create_namespaced_pod, NAMESPACE, probe, dry_run="All").ok
                    and recorder.reviews
                ),
            )

            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "initContainers": [{"name": "migrate", "image": image("migrate", "v1")}],
                    "containers": [
                        {"name": "app", "image": image("app", "v1")},
                        {"name": "proxy", "image": "nginx:1.27"},
                    ],
                    "terminationGracePeriodSeconds": 0,
                },
            }
            _check(cluster.call(core.create_namespaced_pod, NAMESPACE, pod))
            yield "pod-create", recorder.take(is_("pods", "CREATE", "web"))

            patch = [
                {"op": "replace", "path": "/spec/containers/0/image", "value": image("app", "v2")}
            ]
            _check(cluster.call(core.patch_namespaced_pod, "web", NAMESPACE, patch))
            yield "pod-update", recorder.take(is_("pods", "UPDATE", "web"))

            debugger = {
                "name": "debugger",
                "image": image("debug", "v1"),
                "targetContainerName": "app",
            }
            _check(
                cluster.call(
                    core.patch_namespaced_pod_ephemeralcontainers,
                    "web",
                    NAMESPACE,
                    [{"op": "add", "path": "/spec/ephemeralContainers", "value": [debugger]}],
                    _content_type="application/json-patch+json",
                )
            )
            yield (
                "pod-ephemeralcontainers",
                recorder.take(is_("pods", "UPDATE", "web", "ephemeralcontainers")),
            )

            labels = {"app": "api"}
            deployment = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "api", "labels": labels},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "api", "image": image("api", "v1")}]},
                    },
                },
            }
            _check(cluster.call(apps.create_namespaced_deployment, NAMESPACE, deployment))
            yield "deployment-create", recorder.take(is_("deployments", "CREATE", "api"))
            yield (
                "pod-create-from-replicaset",
                recorder.take(
                    lambda r: (
                        is_("pods", "CREATE", None)(r)
                        and r["object"]["metadata"].get("generateName", "").startswith("api-")
                    )
                ),
            )

            cronjob = {
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "metadata": {"name": "report"},
                "spec": {
                    "schedule": "17 3 * * *",
                    "jobTemplate": {
                        "spec": {
                            "template": {
                                "spec": {
                                    "restartPolicy": "OnFailure",
                                    "containers": [
                                        {"name": "report", "image": image("report", "v1")}
                                    ],
                                }
                            }
                        }
                    },
                },
            }
            _check(cluster.call(batch.create_namespaced_cron_job, NAMESPACE, cronjob))
            yield "cronjob-create", recorder.take(is_("cronjobs", "CREATE", "report"))


def _check(answer: cluster.Answer) -> None:
    if not answer.ok:
        raise RuntimeError(f"the apiserver refused an operation: {answer.message}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "tests" / "golden")
    options = parser.parse_args(argv)
    assets = find_assets()
    if assets is None:
        print("control-plane binaries not found: run hack/envtest-assets.sh", file=sys.stderr)
        return 1
    options.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="digestguard-capture-") as work:
        tls = cluster.loopback_tls(Path(work) / "tls")
        started = time.monotonic()
        with ControlPlane(assets, Path(work) / "controlplane") as plane:
            version = plane.version()["gitVersion"]
            for name, review in capture(plane, tls):
                path = options.output / f"{name}.json"
                path.write_text(json.dumps(review, indent=2) + "\n")
                print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        print(f"captured from kube-apiserver {version} in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
