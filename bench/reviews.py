"""AdmissionReview requests as the apiserver sends them for pods."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from typing import Any

from bench import harness


def image(repository: str, tag: str) -> str:
    return f"{harness.REGISTRY}/{repository}:{tag}"


def pod(
    name: str,
    images: Sequence[str],
    *,
    namespace: str = harness.NAMESPACE,
    uid: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": labels or {"app": "bench"},
    }
    if uid is not None:
        metadata["uid"] = uid
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [
                {
                    "name": f"c{index}",
                    "image": reference,
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                }
                for index, reference in enumerate(images)
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "schedulerName": "default-scheduler",
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
        },
        "status": {},
    }


def review(
    obj: dict[str, Any],
    *,
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    uid: str | None = None,
) -> dict[str, Any]:
    metadata = obj["metadata"]
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "6f0e2f4c-0000-4000-8000-000000000001",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": obj,
            "oldObject": old,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
            if operation == "CREATE"
            else {"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions"},
        },
    }


def create(name: str, images: Sequence[str], **kwargs: Any) -> dict[str, Any]:
    return review(pod(name, images, **kwargs))


def update(
    name: str,
    old_images: Sequence[str],
    new_images: Sequence[str],
    *,
    uid: str,
    label: str = "v2",
) -> dict[str, Any]:
    """An UPDATE of an existing pod (it has a uid): images and a label may change."""
    old = pod(name, old_images, uid=uid)
    new = copy.deepcopy(old)
    new["metadata"]["labels"]["rev"] = label
    for container, reference in zip(new["spec"]["containers"], new_images, strict=True):
        container["image"] = reference
    return review(new, operation="UPDATE", old=old)
