"""The few direct Kubernetes API reads that kopf's watches do not cover."""

import asyncio
import datetime
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import kubernetes

from webhook import errors, names

logger = logging.getLogger("digestguard.kubeapi")


def load_configuration() -> None:
    """Use the in-cluster service account, or the kubeconfig outside a cluster."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]


async def namespace_labels(name: str) -> dict[str, str] | None:
    """The labels of namespace `name`, or None if it does not exist (or cannot be read)."""
    return await asyncio.to_thread(_read_namespace_labels, name)


def _read_namespace_labels(name: str) -> dict[str, str] | None:
    api = kubernetes.client.CoreV1Api()
    try:
        namespace = api.read_namespace(name, _request_timeout=(1.0, 2.0))
    except kubernetes.client.ApiException as error:
        if error.status != 404:
            logger.warning(
                "cannot read namespace", extra={"namespace": name, "status": error.status}
            )
        return None
    except Exception as error:
        logger.warning("cannot read namespace", extra={"namespace": name, "error": str(error)})
        return None
    metadata = namespace.metadata
    return dict(metadata.labels or {}) if metadata is not None else {}


async def policy_crd_installed() -> bool:
    """Whether the apiserver serves DigestPolicies (kopf scans resources only at start)."""
    return await asyncio.to_thread(_serves_policies)


def _serves_policies() -> bool:
    api = kubernetes.client.CustomObjectsApi()
    try:
        api.list_cluster_custom_object(
            names.GROUP, names.VERSION, names.PLURAL, limit=1, _request_timeout=(2.0, 5.0)
        )
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            return False
        raise errors.KubernetesError(
            f"cannot list DigestPolicies: HTTP {error.status} {error.reason}", error.status or 0
        ) from error
    return True


def list_pods(
    namespace: str, label_selector: str, limit: int, timeout: float
) -> list[Mapping[str, Any]]:
    """Up to `limit` pods of `namespace` matching `label_selector` (blocking: run it in a
    thread). Read raw, not as the client's objects: only a few fields are used.

    Raises `errors.KubernetesError` when the apiserver refuses or does not answer.
    """
    api = kubernetes.client.CoreV1Api()
    try:
        response = api.list_namespaced_pod(
            namespace,
            label_selector=label_selector,
            limit=limit,
            _preload_content=False,
            _request_timeout=(min(1.0, timeout), timeout),
        )
        listed = json.loads(response.data)  # type: ignore[attr-defined]
    except kubernetes.client.ApiException as error:
        raise errors.KubernetesError(
            f"cannot list pods: HTTP {error.status} {error.reason}", error.status or 0
        ) from error
    except Exception as error:
        raise errors.KubernetesError(f"cannot list pods: {error}", 0) from error
    items = listed.get("items") if isinstance(listed, dict) else None
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def post_warning(
    *,
    namespace: str,
    api_version: str,
    kind: str,
    name: str,
    uid: str,
    reason: str,
    message: str,
    reporter: str,
) -> None:
    """Post a Warning Event on an object (blocking: run it in a thread); a failure is logged."""
    now = datetime.datetime.now(datetime.UTC)
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name[:200]}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": api_version,
            "kind": kind,
            "name": name,
            "namespace": namespace,
            "uid": uid,
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning",
        "count": 1,
        "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {"component": names.COMPONENT},
        "reportingComponent": names.COMPONENT,
        "reportingInstance": reporter,
    }
    api = kubernetes.client.CoreV1Api()
    try:
        api.create_namespaced_event(namespace, body, _request_timeout=(1.0, 5.0))  # type: ignore[arg-type]
    except Exception as error:
        status = getattr(error, "status", None)
        logger.warning(
            "cannot post an event",
            extra={
                "namespace": namespace,
                "object": name,
                "reason": reason,
                "status": status,
                "error": str(error)[:200],
            },
        )
