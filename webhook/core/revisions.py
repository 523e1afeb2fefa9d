"""Controller revisions: which pods must share a digest, and which digest they run.

A revision is what a controller creates identical pods from: a ReplicaSet (one
pod-template-hash), a StatefulSet or DaemonSet revision (`controller-revision-hash`),
a Job, a ReplicationController. Pods of one revision get the digest the revision's
pods already run for the same original reference, so a tag that moves after the
first pods never splits a revision across two builds (README, "Rollouts").
"""

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Final

from webhook import errors
from webhook.core import containers, references

LABEL_POD_TEMPLATE_HASH: Final = "pod-template-hash"
LABEL_CONTROLLER_REVISION_HASH: Final = "controller-revision-hash"
LABEL_JOB_CONTROLLER_UID: Final = "batch.kubernetes.io/controller-uid"
LABEL_JOB_CONTROLLER_UID_LEGACY: Final = "controller-uid"

_REVISION_LABEL: Final[Mapping[str, str]] = {
    "ReplicaSet": LABEL_POD_TEMPLATE_HASH,
    "StatefulSet": LABEL_CONTROLLER_REVISION_HASH,
    "DaemonSet": LABEL_CONTROLLER_REVISION_HASH,
}
_API_GROUPS: Final[Mapping[str, str]] = {
    "ReplicaSet": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "Job": "batch/v1",
    "ReplicationController": "v1",
}


@dataclasses.dataclass(frozen=True)
class Revision:
    """One controller revision of one namespace."""

    namespace: str
    kind: str
    name: str
    uid: str
    hash: str
    """The pod-template-hash or controller-revision-hash; empty for Jobs and RCs."""
    selector: str
    """A label selector that finds the revision's pods (its owner is checked too)."""

    @property
    def api_version(self) -> str:
        return _API_GROUPS[self.kind]

    def __str__(self) -> str:
        revision = f" revision {self.hash}" if self.hash and self.kind != "ReplicaSet" else ""
        return f"{self.kind} {self.namespace}/{self.name}{revision}"


def of(pod: Mapping[str, Any], namespace: str) -> Revision | None:
    """The revision a pod belongs to, from its controller owner and labels; None when
    no controller of a known kind owns it (a bare pod) or its labels do not say which
    revision it is of."""
    metadata = pod.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    owner = _controller(metadata)
    if owner is None:
        return None
    kind, name, uid = owner
    labels = metadata.get("labels")
    labels = labels if isinstance(labels, Mapping) else {}
    label = _REVISION_LABEL.get(kind)
    if label is not None:
        revision_hash = labels.get(label)
        if not isinstance(revision_hash, str) or not revision_hash:
            return None
        return Revision(namespace, kind, name, uid, revision_hash, f"{label}={revision_hash}")
    if kind == "Job":
        # A Job's template cannot change: the Job is the revision.
        for key in (LABEL_JOB_CONTROLLER_UID, LABEL_JOB_CONTROLLER_UID_LEGACY):
            if labels.get(key) == uid:
                return Revision(namespace, kind, name, uid, "", f"{key}={uid}")
        return Revision(namespace, kind, name, uid, "", "")
    if kind == "ReplicationController":
        # No revision label: pods with all the same labels came from the same template.
        selector = ",".join(
            f"{key}={value}"
            for key, value in sorted(labels.items())
            if isinstance(key, str) and isinstance(value, str)
        )
        return Revision(namespace, kind, name, uid, "", selector)
    return None


@dataclasses.dataclass(frozen=True)
class Controller:
    """The owner reference marked `controller: true` of an object."""

    kind: str
    name: str
    api_version: str
    uid: str


def controller_of(metadata: Mapping[str, Any]) -> Controller | None:
    """The controlling owner named in `metadata`, when it names one with a kind and name."""
    owners = metadata.get("ownerReferences")
    if not isinstance(owners, list):
        return None
    for owner in owners:
        if not isinstance(owner, Mapping) or owner.get("controller") is not True:
            continue
        kind, name, api_version = owner.get("kind"), owner.get("name"), owner.get("apiVersion")
        if isinstance(kind, str) and kind and isinstance(name, str) and name:
            return Controller(
                kind,
                name,
                api_version if isinstance(api_version, str) else "",
                str(owner.get("uid") or ""),
            )
    return None


def _controller(metadata: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(kind, name, uid) of a controller that makes revisions of pods."""
    owner = controller_of(metadata)
    if owner is None or owner.kind not in _API_GROUPS or not owner.uid:
        return None
    return owner.kind, owner.name, owner.uid


def digests_in_use(
    revision: Revision,
    pods: Iterable[Mapping[str, Any]],
    *,
    plain_http: references.PlainHttpHosts = references.NO_PLAIN_HTTP,
) -> dict[str, references.Digest]:
    """For each original reference the revision's pods were pinned from, the digest they run.

    Read from the `original-images` annotation and the pinned image beside it. Should
    the revision already run two digests for one reference, the oldest pod's wins.
    """
    found: dict[str, references.Digest] = {}
    # The items of a list of pods carry no `kind`; the container walker needs it.
    of_revision = [{**pod, "kind": "Pod"} for pod in pods if _belongs(pod, revision)]
    of_revision.sort(key=_age_key)
    for pod in of_revision:
        originals = containers.original_images(pod)
        if not originals:
            continue
        for container in containers.walk(pod):
            original = originals.get(containers.original_key(container))
            if original is None or original in found:
                continue
            try:
                pinned = references.parse(container.image, plain_http=plain_http)
            except errors.InvalidReference:
                continue
            if pinned.digest is not None:
                found[original] = pinned.digest
    return found


def _belongs(pod: Mapping[str, Any], revision: Revision) -> bool:
    metadata = pod.get("metadata")
    if not isinstance(metadata, Mapping) or _controller(metadata) is None:
        return False
    return of(pod, revision.namespace) == revision


def _age_key(pod: Mapping[str, Any]) -> tuple[str, str]:
    metadata = pod.get("metadata")
    if not isinstance(metadata, Mapping):
        return ("", "")
    return (str(metadata.get("creationTimestamp") or ""), str(metadata.get("name") or ""))
