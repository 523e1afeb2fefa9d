"""The few direct Kubernetes API reads that kopf's watches do not cover."""

import asyncio
import logging
import os

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
