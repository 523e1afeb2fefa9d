"""The few direct Kubernetes API reads that kopf's watches do not cover."""

import asyncio
import datetime
import json
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, Final

import kubernetes

from webhook import errors, names

logger = logging.getLogger("digestguard.kubeapi")


def load_configuration(kubeconfig: str | None = None) -> None:
    """Use the in-cluster service account, or the kubeconfig outside a cluster (`kubeconfig`,
    else $KUBECONFIG, else ~/.kube/config)."""
    if kubeconfig:
        kubernetes.config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        return
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]


def load_configuration_for_cli(kubeconfig: str | None) -> None:
    """`load_configuration`, raising `errors.ConfigurationError` with the reason when no
    usable configuration is found (a command line prints it rather than a traceback)."""
    try:
        load_configuration(kubeconfig)
    except Exception as error:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise errors.ConfigurationError(
            f"cannot load the Kubernetes configuration (not in a cluster; kubeconfig"
            f" {where}): {str(error)[:300]}"
        ) from None


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


RUNNING_PHASES: Final = "status.phase!=Succeeded,status.phase!=Failed"
"""A field selector for pods that may still run (or start) containers."""


def pod_pages(
    namespace: str | None, *, page_size: int = 500, timeout: float = 30.0
) -> Iterator[list[Mapping[str, Any]]]:
    """The pods that may still run, of one namespace or (None) all, a page at a time
    (blocking), so a listing of any size is held a page at a time.

    Raises `errors.KubernetesError` when the apiserver refuses or does not answer.
    """
    api = kubernetes.client.CoreV1Api()
    token = ""
    while True:
        arguments: dict[str, Any] = {
            "field_selector": RUNNING_PHASES,
            "limit": page_size,
            "_preload_content": False,
            "_request_timeout": (min(5.0, timeout), timeout),
        }
        if token:
            arguments["_continue"] = token
        try:
            if namespace is None:
                response = api.list_pod_for_all_namespaces(**arguments)
            else:
                response = api.list_namespaced_pod(namespace, **arguments)
            listed = json.loads(response.data)  # type: ignore[attr-defined]
        except kubernetes.client.ApiException as error:
            raise errors.KubernetesError(
                f"cannot list pods{_in(namespace)}: HTTP {error.status} {error.reason}",
                error.status or 0,
            ) from error
        except Exception as error:
            raise errors.KubernetesError(f"cannot list pods{_in(namespace)}: {error}", 0) from error
        items = listed.get("items") if isinstance(listed, dict) else None
        yield [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
        metadata = listed.get("metadata") if isinstance(listed, dict) else None
        token = str(metadata.get("continue") or "") if isinstance(metadata, dict) else ""
        if not token:
            return


def _in(namespace: str | None) -> str:
    return f" in namespace {namespace}" if namespace else " in all namespaces"


def deployment_uid(namespace: str, name: str) -> str | None:
    """The uid of a Deployment (blocking), or None when it cannot be read."""
    api = kubernetes.client.AppsV1Api()
    try:
        response = api.read_namespaced_deployment(
            name, namespace, _preload_content=False, _request_timeout=(1.0, 5.0)
        )
        document = json.loads(response.data)  # type: ignore[attr-defined]
        uid = document.get("metadata", {}).get("uid")
    except Exception as error:
        logger.info(
            "cannot read a Deployment",
            extra={
                "namespace": namespace,
                "object": name,
                "status": getattr(error, "status", None),
                "error": str(error)[:200],
            },
        )
        return None
    return uid if isinstance(uid, str) and uid else None


def read_lease(namespace: str, name: str) -> dict[str, Any] | None:
    """A Lease as JSON, or None if it does not exist (blocking)."""
    api = kubernetes.client.CoordinationV1Api()
    try:
        response = api.read_namespaced_lease(
            name, namespace, _preload_content=False, _request_timeout=(1.0, 5.0)
        )
        lease = json.loads(response.data)  # type: ignore[attr-defined]
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            return None
        raise _lease_error("read", namespace, name, error) from error
    except Exception as error:
        raise errors.KubernetesError(f"cannot read Lease {namespace}/{name}: {error}") from error
    return lease if isinstance(lease, dict) else None


def write_lease(namespace: str, body: Mapping[str, Any], *, create: bool) -> dict[str, Any]:
    """Create a Lease, or replace it (its `resourceVersion` guards against a lost update);
    raises `errors.Conflict` when someone else wrote first."""
    api = kubernetes.client.CoordinationV1Api()
    name = str(body.get("metadata", {}).get("name", ""))
    try:
        if create:
            response = api.create_namespaced_lease(
                namespace,
                body,  # type: ignore[arg-type]
                _preload_content=False,
                _request_timeout=(1.0, 5.0),
            )
        else:
            response = api.replace_namespaced_lease(
                name,
                namespace,
                body,  # type: ignore[arg-type]
                _preload_content=False,
                _request_timeout=(1.0, 5.0),
            )
        written = json.loads(response.data)  # type: ignore[attr-defined]
    except kubernetes.client.ApiException as error:
        if error.status == 409:
            raise errors.Conflict(f"Lease {namespace}/{name} was written by another", 409) from None
        raise _lease_error("create" if create else "update", namespace, name, error) from error
    except Exception as error:
        raise errors.KubernetesError(f"cannot write Lease {namespace}/{name}: {error}") from error
    return written if isinstance(written, dict) else {}


def _lease_error(
    verb: str, namespace: str, name: str, error: "kubernetes.client.ApiException"
) -> errors.KubernetesError:
    return errors.KubernetesError(
        f"cannot {verb} Lease {namespace}/{name}: HTTP {error.status} {error.reason}",
        error.status or 0,
    )


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
) -> bool:
    """Post a Warning Event on an object (blocking: run it in a thread); whether it was
    posted (a failure is logged)."""
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
        return True
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
        return False
