"""`make demo`: digestguard on a local control plane, until Ctrl-C.

Starts etcd, kube-apiserver and kube-controller-manager (built by
hack/envtest-assets.sh), an ECR emulator (moto) holding a few sample images, and
`digestguard serve`; installs the chart's CRD, webhook configurations and default
policy (Mutate every ECR image); creates a pod that gets pinned and one that is
rejected, says what happened, and leaves the cluster to try with kubectl. Every
process it started is stopped on the way out, whatever the way out is.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client  # noqa: E402

from tests.support import cluster, ecr_emulator  # noqa: E402
from tests.support.controlplane import ControlPlane, find_assets, find_helm  # noqa: E402
from tests.support.webhook_process import WebhookProcess  # noqa: E402
from webhook import names  # noqa: E402

RELEASE = "digestguard"
WEBHOOK_NAMESPACE = "digestguard"
DEMO_NAMESPACE = "demo"
REGISTRY = ecr_emulator.registry_host()


def say(text: str = "", indent: int = 0) -> None:
    print(textwrap.indent(text, " " * indent), flush=True)


def image(repository: str, tag: str) -> str:
    return f"{REGISTRY}/{repository}:{tag}"


class _Stop(Exception):
    """SIGTERM, turned into an exception so that the clean-up runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    started = time.monotonic()
    print(f"  {what} ...", end="", flush=True)
    yield
    print(f" done ({time.monotonic() - started:.0f}s)", flush=True)


def seed_images(url: str) -> dict[str, str]:
    """Push the sample images; image reference → digest."""
    ecr = ecr_emulator.ecr_client(url)
    index, _ = ecr_emulator.multi_arch(ecr_emulator.OCI_INDEX, seed="shop/web")
    samples = {
        image("shop/api", "v1.4.2"): (
            ecr_emulator.docker_manifest(seed="shop/api"),
            ecr_emulator.DOCKER_MANIFEST,
        ),
        image("shop/web", "2.0"): (index, ecr_emulator.OCI_INDEX),
        image("tools/debug", "latest"): (
            ecr_emulator.oci_manifest(seed="tools/debug"),
            ecr_emulator.OCI_MANIFEST,
        ),
    }
    digests = {}
    for reference, (manifest, media_type) in samples.items():
        repository, tag = reference.removeprefix(f"{REGISTRY}/").rsplit(":", 1)
        digests[reference] = ecr_emulator.seed_image(ecr, repository, tag, manifest, media_type)
    return digests


def run(stack: contextlib.ExitStack, work: Path) -> None:
    assets = find_assets()
    helm = find_helm(assets)
    if assets is None or helm is None:
        raise SystemExit("control-plane binaries or helm not found: run hack/envtest-assets.sh")

    say("digestguard demo: a local control plane, an ECR emulator and the webhook\n")
    with step("starting etcd, kube-apiserver and kube-controller-manager"):
        plane = stack.enter_context(ControlPlane(assets, work / "controlplane"))
    api = stack.enter_context(plane.new_api_client())
    with step("starting the ECR emulator (moto) with sample images"):
        moto = ecr_emulator.start_moto_server()
        stack.callback(moto.stop)
        digests = seed_images(moto.url)
    with step("installing the DigestPolicy CRD from the chart"):
        cluster.install_crd(api)
    tls = cluster.loopback_tls(work / "tls")
    webhook = WebhookProcess(
        kubeconfig=plane.kubeconfig_path,
        namespace=WEBHOOK_NAMESPACE,
        workdir=work / "webhook",
        ecr_endpoint_url=moto.url,
        certfile=tls.cert_file,
        keyfile=tls.key_file,
        cafile=tls.ca_file,
        extra_args=["--log-level", "info"],
    )
    with step("starting the webhook (digestguard serve)"):
        stack.enter_context(webhook)
    with step("registering the chart's webhook configurations and default policy"):
        rendered = cluster.render_chart(
            helm,
            release=RELEASE,
            namespace=WEBHOOK_NAMESPACE,
            values={},
            templates=[cluster.WEBHOOK_TEMPLATE, cluster.DEFAULT_POLICY_TEMPLATE],
        )
        configurations = [d for d in rendered if d["kind"].endswith("WebhookConfiguration")]
        policy = next(d for d in rendered if d["kind"] == names.KIND)
        stack.enter_context(
            cluster.Registration(
                api, cluster.point_at(configurations, webhook.base_url, tls.ca_bundle)
            )
        )
        cluster.apply_policy(api, policy["metadata"]["name"], policy["spec"])
        cluster.create_namespace(api, DEMO_NAMESPACE)
    demonstrate(api, policy, digests)
    explain(plane, webhook, policy["metadata"]["name"])
    while True:
        signal.pause()


def demonstrate(api: Any, policy: dict[str, Any], digests: dict[str, str]) -> None:
    core = client.CoreV1Api(api)
    name = policy["metadata"]["name"]
    say(
        f'\nDigestPolicy "{name}" ({policy["spec"]["action"]}) covers every ECR image'
        " in every namespace but kube-system and digestguard.\n"
    )

    good = image("shop/api", "v1.4.2")
    pod = cluster.pod("pinned", good)
    pod["spec"]["containers"][0]["name"] = "api"
    say(f"1. Creating pod {DEMO_NAMESPACE}/pinned with image\n     {good}")
    # The webhook configurations reach the apiserver's admission chain a moment later.
    cluster.eventually(
        "the apiserver to call the webhook",
        lambda: cluster.original_images(
            cluster.call(core.create_namespaced_pod, DEMO_NAMESPACE, pod, dry_run="All").body
        ),
    )
    answer = cluster.call(core.create_namespaced_pod, DEMO_NAMESPACE, pod)
    stored = cluster.images_of(answer.body).get("api") if answer.ok else None
    if stored == f"{good}@{digests[good]}":
        say("   It was admitted, with its image pinned to the digest ECR reports:")
        say(stored, 5)
        say(
            f"   The reference it was created with is kept in the annotation\n"
            f"   {names.ANNOTATION_ORIGINAL_IMAGES}:"
            f" {json.dumps(cluster.original_images(answer.body))}"
        )
    else:
        say(f"   Unexpected: {answer.status} {answer.message or stored}")

    missing = image("shop/api", "v9.9.9")
    say(f"\n2. Creating pod {DEMO_NAMESPACE}/rejected with image\n     {missing}")
    rejected = cluster.pod("rejected", missing)
    rejected["spec"]["containers"][0]["name"] = "api"
    refused = cluster.call(core.create_namespaced_pod, DEMO_NAMESPACE, rejected)
    if refused.ok:
        say("   Unexpected: it was admitted.")
    else:
        say("   It was rejected at admission, before any node tried to pull it:")
        wrapped = textwrap.fill(refused.message, 88, break_long_words=False, break_on_hyphens=False)
        say(wrapped, 5)


def explain(plane: ControlPlane, webhook: WebhookProcess, policy: str) -> None:
    kubeconfig = plane.kubeconfig_path
    web, typo = image("shop/web", "2.0"), image("shop/web", "2.0.1")
    columns = "NAME:.metadata.name,IMAGE:.spec.containers[0].image"
    say(
        f"""
Try it yourself. The cluster runs until you press Ctrl-C.

  export KUBECONFIG={kubeconfig}
  kubectl get digestpolicies
  kubectl -n {DEMO_NAMESPACE} get pod pinned -o jsonpath='{{.spec.containers[0].image}}{{"\\n"}}'
  # a multi-arch image: the digest of its index is pinned
  kubectl -n {DEMO_NAMESPACE} run web --image={web}
  # a tag that does not exist: rejected
  kubectl -n {DEMO_NAMESPACE} run typo --image={typo}
  # pods made by a Deployment's ReplicaSet are pinned too
  kubectl -n {DEMO_NAMESPACE} create deployment shop --image={image("shop/api", "v1.4.2")}
  kubectl -n {DEMO_NAMESPACE} get pods -o custom-columns={columns}
  # change what the policy does: Audit only warns, Enforce requires digests
  kubectl patch dgp {policy} --type=merge -p '{{"spec":{{"action":"Audit"}}}}'

No kubelet runs here: pods are admitted and stored, never started.
Sample images: {image("shop/api", "v1.4.2")}, {web}, {image("tools/debug", "latest")}
Webhook log: {webhook.log_path}
Metrics:     http://127.0.0.1:{webhook.health_port}/metrics
"""
    )


def main() -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="digestguard-demo-"))
    status = 0
    try:
        with contextlib.ExitStack() as stack:
            try:
                run(stack, work)
            except (KeyboardInterrupt, _Stop):
                print()
            except Exception as error:
                traceback.print_exc()
                say(f"\nThe demo failed: {error}")
                status = 1
            finally:
                # A second Ctrl-C must not cut the clean-up short.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                say("Stopping every process the demo started ...")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say("Stopped.")
    return status


if __name__ == "__main__":
    sys.exit(main())
