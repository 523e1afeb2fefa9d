"""Registry calls of one audit cycle: 10,000 pods over 100 ECR repositories.

The audit's own code path (`serving/audit.Auditor`: inventory, queries, a resolver of
the cycle's own, the ECR client's batching) runs in-process against the ECR stub over
real HTTP; the stub counts the requests it receives, and the cycle's own counter (the
`digestguard_audit_registry_calls` metric) must agree. Pods are made as the apiserver
lists them (pinned, the original image in the annotation, owned by a Deployment's
ReplicaSet) and handed over in pages of 500, as `kubeapi.pod_pages` would.

    python -m bench.audit_calls [--pods 10000] [--repositories 100]

Three shapes of cluster, the same pods each time:

- steady: every Deployment runs the digest its tag names;
- rolling: every repository has pods on two digests (half of them mid-rollout);
- worst: every pod of a repository runs a digest of its own (100 per repository).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from tests.support import ecr_emulator
from tests.support.ecr_stub import EcrStub
from webhook import names
from webhook.registries import ecr, oci, routing
from webhook.serving import audit

RESULTS = Path(__file__).resolve().parent / "results" / "audit_calls.json"
HOST = ecr_emulator.registry_host()
PAGE = 500


def _pod(index: int, repository: str, deployment: str, digest: str) -> dict[str, Any]:
    original = f"{HOST}/{repository}:v1"
    return {
        "metadata": {
            "name": f"{deployment}-5d8f7c9b6-{index:05d}",
            "namespace": f"team-{repository.split('-')[-1]}",
            "labels": {"pod-template-hash": "5d8f7c9b6"},
            "annotations": {
                names.ANNOTATION_ORIGINAL_IMAGES: json.dumps({"containers/app": original})
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{deployment}-5d8f7c9b6",
                    "uid": f"{deployment}-uid",
                    "controller": True,
                }
            ],
        },
        "spec": {"containers": [{"name": "app", "image": f"{original}@{digest}"}]},
        "status": {"phase": "Running"},
    }


def _cluster(stub: EcrStub, shape: str, pods: int, repositories: int) -> list[dict[str, Any]]:
    per_repository = pods // repositories
    made: list[dict[str, Any]] = []
    for r in range(repositories):
        repository = f"bench/app-{r:03d}"
        tag_digest = stub.add_image(
            repository, "v1", ecr_emulator.docker_manifest(seed=f"{repository}:v1"), ""
        )
        old = stub.add_image(
            repository, None, ecr_emulator.docker_manifest(seed=f"{repository}:old"), ""
        )
        for i in range(per_repository):
            if shape == "steady":
                digest = tag_digest
            elif shape == "rolling":
                digest = tag_digest if i % 2 else old
            else:
                digest = stub.add_image(
                    repository, None, ecr_emulator.docker_manifest(seed=f"{repository}/{i}"), ""
                )
            deployment = f"app-{r:03d}-d{i % 10}"
            made.append(_pod(len(made), repository, deployment, digest))
    return made


def measure(shape: str, pods: int, repositories: int) -> dict[str, Any]:
    with EcrStub() as stub:
        cluster = _cluster(stub, shape, pods, repositories)
        pages = [cluster[i : i + PAGE] for i in range(0, len(cluster), PAGE)]
        calls = audit.CallCounter()
        oci_client = oci.OciClient(on_request=calls.count)
        client = routing.RoutingClient(
            ecr.EcrClient(
                endpoint_url=stub.url, session=ecr_emulator.session(), on_request=calls.count
            ),
            oci_client,
        )
        auditor = audit.Auditor(client, calls, pages=lambda namespace: iter(pages))
        stub.reset()
        started = time.perf_counter()
        report = auditor.run()
        seconds = time.perf_counter() - started
        received = stub.requests("BatchGetImage")
        oci_client.close()
    ids = sorted(len(r["body"]["imageIds"]) for r in received)
    return {
        "shape": shape,
        "pods": report.pods,
        "repositories": repositories,
        "running_images": len(report.findings),
        "states": report.states(),
        "batch_get_image_received_by_the_stub": len(received),
        "largest_request_image_ids": ids[-1] if ids else 0,
        "registry_calls_counted_by_the_cycle": dict(report.registry_calls),
        "cycle_seconds": round(seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--repositories", type=int, default=100)
    options = parser.parse_args()
    runs = [
        measure(shape, options.pods, options.repositories)
        for shape in ("steady", "rolling", "worst")
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    print(
        "| cluster | pods | repositories | running images | BatchGetImage (stub) |"
        " largest request | counted by the cycle | cycle |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for run in runs:
        print(
            f"| {run['shape']} | {run['pods']:,} | {run['repositories']} |"
            f" {run['running_images']:,} | {run['batch_get_image_received_by_the_stub']} |"
            f" {run['largest_request_image_ids']} ids |"
            f" {run['registry_calls_counted_by_the_cycle']} | {run['cycle_seconds']} s |"
        )


if __name__ == "__main__":
    main()
