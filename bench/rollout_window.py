"""One revision, one digest, across two replicas: how often does a ReplicaSet end up on
two digests when its tag moves while it is being created?

Two `digestguard serve` processes behind a Service stand-in (`ServiceProxy`, each new
connection to the next ready process, as kube-proxy does) answer the real apiserver;
the real kube-controller-manager makes the pods; ECR is the moto emulator. Each
trial moves the tag `v1` (the old image kept, as ECR keeps it) and, after a random
delay of 0 to 1 s, creates a Deployment of 8 replicas: the first pods of its
ReplicaSet are pinned while the two replicas' caches disagree about `v1` (one may
have cached it a moment before the move). Then it counts the ReplicaSets whose pods
run more than one digest, and which replica pinned what, from their metrics.

    python -m bench.rollout_window              # ~3 min; writes results/rollout_window.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.support import cluster, controlplane, ecr_emulator
from tests.support.service_proxy import Backend, ServiceProxy
from tests.support.webhook_process import WebhookProcess

RESULTS = Path(__file__).parent / "results" / "rollout_window.json"
REPLICAS = 8
RELEASE = "window"


def _deployment(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "app", "image": image}],
                    "terminationGracePeriodSeconds": 0,
                },
            },
        },
    }


def _push(ecr: Any, repo: str) -> str:
    return ecr_emulator.seed_image(
        ecr,
        repo,
        "v1",
        ecr_emulator.docker_manifest(seed=uuid.uuid4().hex),
        ecr_emulator.DOCKER_MANIFEST,
    )


def _keep(ecr: Any, repo: str) -> None:
    """Tag the image `v1` points to once more, so moving `v1` keeps it (as ECR does)."""
    image = ecr.batch_get_image(repositoryName=repo, imageIds=[{"imageTag": "v1"}])["images"][0]
    ecr.put_image(
        repositoryName=repo,
        imageManifest=image["imageManifest"],
        imageManifestMediaType=image["imageManifestMediaType"],
        imageDigest=image["imageId"]["imageDigest"],
        imageTag=f"keep-{image['imageId']['imageDigest'][7:19]}",
    )


def run(trials: int, work: Path) -> dict[str, Any]:
    assets = controlplane.find_assets()
    helm = controlplane.find_helm(assets)
    if assets is None or helm is None:
        raise SystemExit(
            "the control-plane binaries and helm are needed: run hack/envtest-assets.sh"
        )
    plane = controlplane.ControlPlane(assets, work / "controlplane").start()
    moto = ecr_emulator.start_moto_server()
    processes: list[WebhookProcess] = []
    try:
        api = plane.new_api_client()
        cluster.install_crd(api)
        ecr = ecr_emulator.ecr_client(moto.url)
        tls = cluster.loopback_tls(work / "tls")
        for index in range(2):
            process = WebhookProcess(
                kubeconfig=plane.kubeconfig_path,
                namespace="digestguard",
                workdir=work / f"webhook-{index}",
                ecr_endpoint_url=moto.url,
                certfile=tls.cert_file,
                keyfile=tls.key_file,
                cafile=tls.ca_file,
                extra_args=["--log-level", "info"],
            )
            processes.append(process.start())
        namespace = cluster.unique("window")
        cluster.create_namespace(api, namespace, {cluster.SCOPE_LABEL: RELEASE})
        cluster.apply_policy(
            api,
            "window",
            {
                "images": ["*.dkr.ecr.*.amazonaws.com/**"],
                "namespaceSelector": cluster.only_in(namespace),
            },
        )
        rendered = cluster.render_webhook_configurations(
            helm, release=RELEASE, namespace="digestguard", values=cluster.scoped_values(RELEASE)
        )
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        repo = "bench/window"
        _push(ecr, repo)
        image = f"{ecr_emulator.registry_host()}/{repo}:v1"
        outcomes: list[dict[str, Any]] = []
        with ServiceProxy() as proxy:
            proxy.backends = [Backend(p.port, p.health_port) for p in processes]
            with cluster.Registration(
                api, cluster.point_at(rendered, f"https://127.0.0.1:{proxy.port}", tls.ca_bundle)
            ):
                cluster.eventually("both replicas routed to", lambda: len(proxy.ready) == 2, 30)
                # Both replicas cache `v1` (a bare pod through each connection in turn).
                for n in range(6):
                    cluster.call(
                        core.create_namespaced_pod, namespace, cluster.pod(f"warm-{n}", image)
                    )
                for trial in range(trials):
                    _keep(ecr, repo)
                    moved = _push(ecr, repo)
                    delay = random.uniform(0.0, 1.0)
                    time.sleep(delay)
                    name = f"web-{trial}"
                    made = cluster.call(
                        apps.create_namespaced_deployment, namespace, _deployment(name, image)
                    )
                    assert made.ok, made.body

                    def pods(app: str = name) -> list[dict[str, Any]] | None:
                        listed = cluster.call(
                            core.list_namespaced_pod, namespace, label_selector=f"app={app}"
                        ).body["items"]
                        return listed if len(listed) >= REPLICAS else None

                    made_pods = cluster.eventually(f"the pods of {name}", pods, 120)
                    digests = sorted(
                        {cluster.images_of(p)["app"].partition("@")[2] for p in made_pods}
                    )
                    outcomes.append(
                        {
                            "trial": trial,
                            "delay_s": round(delay, 3),
                            "digests": len(digests),
                            "on_moved_digest": digests == [moved],
                        }
                    )
                    print(json.dumps(outcomes[-1]), file=sys.stderr, flush=True)
                routed = dict(proxy.routed)
        pins = [
            {
                how: process.metric("digestguard_rollout_pins_total", how=how)
                for how in ("first", "revision", "gone", "unread")
            }
            for process in processes
        ]
    finally:
        for process in processes:
            process.stop()
        moto.stop()
        plane.stop()
    return {
        "trials": trials,
        "replicas_per_deployment": REPLICAS,
        "split_replicasets": sum(1 for o in outcomes if o["digests"] > 1),
        "on_the_moved_digest": sum(1 for o in outcomes if o["on_moved_digest"]),
        "connections_per_replica": routed,
        "pins_per_replica": pins,
        "per_trial": outcomes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=20)
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="digestguard-window-") as directory:
        started = time.time()
        results = run(arguments.trials, Path(directory))
    document = {
        "benchmark": "rollout_window",
        "command": f"python -m bench.rollout_window --trials {arguments.trials}",
        "wall_seconds": round(time.time() - started),
        "results": results,
    }
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "per_trial"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
