"""The running-image audit, in the pure core: what the pods of a cluster run, what to ask
the registry about it, and what each answer means for them.

A pod admitted by digestguard runs the digest in its pinned image (`repo:tag@sha256:…`)
and says what it was written as in the `digestguard.io/original-images` annotation; a
pod admitted before digestguard (or not covered by a policy) runs what its container
status's `imageID` names. Each (namespace, owner, container, original image, running
digest) is one `Running` image, however many pods run it, and ends in one `State`:

    current     the digest exists, and the tag (if any) still resolves to it
    tag-moved   the digest exists, but the tag now resolves to another digest (or none)
    gone        the digest no longer exists: a pod that starts again cannot pull it
    archived    the digest is in ECR's archive storage class: it cannot be pulled
                until it is restored
    unknown     the registry could not tell

The owner is the workload an operator looks at: a pod's controller, lifted from a
ReplicaSet to its Deployment when the ReplicaSet's name is `<deployment>-<hash>` with
`<hash>` the pod's `pod-template-hash` label (the only way the Deployment controller
names the ReplicaSets it makes); a pod without a controller is its own owner.
"""

import dataclasses
import enum
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from webhook import errors
from webhook.core import containers, outcomes, references, revisions, text


class State(enum.Enum):
    CURRENT = "current"
    TAG_MOVED = "tag-moved"
    GONE = "gone"
    ARCHIVED = "archived"
    UNKNOWN = "unknown"
    EXPIRING = "expiring"


BROKEN: Final = frozenset({State.GONE, State.ARCHIVED})
"""States in which a pod that starts again (node replaced, evicted) cannot pull its image."""

MAX_RUNNING: Final = 100_000
"""Distinct running images kept from one listing; past that, containers are skipped."""
MAX_SKIPPED: Final = 1_000
"""Skipped containers described from one listing (all are counted)."""

_FINISHED_PHASES: Final = frozenset({"Succeeded", "Failed"})
_STATUS_LISTS: Final[Mapping[str, str]] = {
    "initContainers": "initContainerStatuses",
    "containers": "containerStatuses",
    "ephemeralContainers": "ephemeralContainerStatuses",
}
_RUNTIME_PREFIX: Final = re.compile(r"^[a-z][a-z0-9+.-]*://")
"""How runtimes prefix an imageID: `docker-pullable://`, `docker://`, `containerd://`…"""


@dataclasses.dataclass(frozen=True)
class Owner:
    """The object an image is reported on."""

    kind: str
    name: str
    api_version: str
    uid: str
    """Empty for a Deployment derived from its ReplicaSet's name: read it to post on it."""

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclasses.dataclass(frozen=True)
class Running:
    """One image running in one container of one owner's pods."""

    namespace: str
    owner: Owner
    list_name: str
    container: str
    image: str
    """The original reference: what the pod spec was written as."""
    repository: outcomes.Repository
    """Where the running digest is pulled from."""
    digest: references.Digest
    tag: str | None
    """The tag the original reference follows; None for one written by digest only."""
    controller: Owner | None = dataclasses.field(default=None, compare=False)
    """The pod's own controller (its ReplicaSet) when `owner` was derived from it."""

    @property
    def container_label(self) -> str:
        """The container as tables show it: its name, or `initContainers[name]`."""
        if self.list_name == "containers":
            return self.container
        return f"{self.list_name}[{self.container}]"

    @property
    def digest_query(self) -> outcomes.Query:
        return outcomes.Query(self.repository, digest=self.digest)

    @property
    def tag_query(self) -> outcomes.Query | None:
        return None if self.tag is None else outcomes.Query(self.repository, tag=self.tag)


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A container the audit could not place, and why (logged, never fatal)."""

    namespace: str
    pod: str
    container: str
    reason: str


@dataclasses.dataclass
class Inventory:
    """What a listing of pods runs: each running image with the number of its pods."""

    running: dict[Running, int] = dataclasses.field(default_factory=dict)
    skipped: list[Skipped] = dataclasses.field(default_factory=list)
    skipped_count: int = 0
    pods: int = 0

    def add(
        self,
        pods: Iterable[Mapping[str, Any]],
        *,
        plain_http: references.PlainHttpHosts = references.NO_PLAIN_HTTP,
    ) -> None:
        """Take in one page of a pod list (items as the apiserver lists them)."""
        for pod in pods:
            self._add_pod(pod, plain_http)

    def _skip(self, namespace: str, pod: str, container: str, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_SKIPPED:
            self.skipped.append(Skipped(namespace, pod, container, reason))

    def _add_pod(self, pod: Mapping[str, Any], plain_http: references.PlainHttpHosts) -> None:
        metadata = pod.get("metadata") if isinstance(pod, Mapping) else None
        if not isinstance(metadata, Mapping):
            self._skip("", "", "", "the pod has no metadata")
            return
        namespace, name = metadata.get("namespace"), metadata.get("name")
        if not isinstance(namespace, str) or not namespace or not isinstance(name, str) or not name:
            self._skip(
                str(namespace or ""), str(name or ""), "", "the pod has no namespace or name"
            )
            return
        status = pod.get("status")
        status = status if isinstance(status, Mapping) else {}
        if metadata.get("deletionTimestamp") or status.get("phase") in _FINISHED_PHASES:
            return
        self.pods += 1
        owner, controller = owner_of(metadata)
        # The items of a list of pods carry no `kind`; the container walker needs it.
        as_pod = {**pod, "kind": "Pod"}
        originals = containers.original_images(as_pod)
        for container in containers.walk(as_pod):
            found = _running_image(container, originals, status, plain_http)
            if isinstance(found, str):
                if found:
                    self._skip(namespace, name, container.label, found)
                continue
            original, pulled, digest, tag = found
            running = Running(
                namespace=namespace,
                owner=owner,
                list_name=container.list_name,
                container=container.container,
                image=original,
                repository=outcomes.Repository(pulled.registry, pulled.repository),
                digest=digest,
                tag=tag,
                controller=controller,
            )
            if running not in self.running and len(self.running) >= MAX_RUNNING:
                self._skip(namespace, name, container.label, "too many distinct running images")
                continue
            self.running[running] = self.running.get(running, 0) + 1


def _running_image(
    container: containers.ContainerImage,
    originals: Mapping[str, str],
    status: Mapping[str, Any],
    plain_http: references.PlainHttpHosts,
) -> tuple[str, references.ImageReference, references.Digest, str | None] | str:
    """(original reference, the reference pulled, the digest it runs, the tag it follows),
    or why the running digest cannot be told (empty: not worth a log line, such as an
    image not pulled yet)."""
    try:
        spec = references.parse(container.image, plain_http=plain_http)
    except errors.InvalidReference as error:
        return error.problem
    if spec.digest is not None:
        original = originals.get(containers.original_key(container), container.image)
        try:
            written = references.parse(original, plain_http=plain_http)
        except errors.InvalidReference:
            written = spec
            original = container.image
        if written.name != spec.name:
            # The annotation does not describe this image (edited by hand): trust the spec.
            written, original = spec, container.image
        return original, spec, spec.digest, _followed_tag(written)
    image_id = _status_image_id(container, status)
    if not image_id:
        return ""
    reported = _RUNTIME_PREFIX.sub("", image_id)
    if "@" not in reported:
        return f"the runtime reports image ID {text.quoted(image_id, 120)}, not a repository digest"
    try:
        pulled = references.parse(reported, plain_http=plain_http)
    except errors.InvalidReference as error:
        return f"image ID {text.quoted(image_id, 120)}: {error.problem}"
    if pulled.name != spec.name or pulled.digest is None:
        return (
            f"the runtime reports image ID {text.quoted(image_id, 120)}, of another"
            f" repository than {spec.name}"
        )
    return container.image, spec, pulled.digest, _followed_tag(spec)


def _followed_tag(reference: references.ImageReference) -> str | None:
    if reference.tag is not None:
        return reference.tag
    return outcomes.IMPLICIT_TAG if reference.digest is None else None


def _status_image_id(container: containers.ContainerImage, status: Mapping[str, Any]) -> str:
    statuses = status.get(_STATUS_LISTS.get(container.list_name, ""))
    if not isinstance(statuses, list):
        return ""
    for entry in statuses:
        if isinstance(entry, Mapping) and entry.get("name") == container.container:
            image_id = entry.get("imageID")
            return image_id if isinstance(image_id, str) else ""
    return ""


def owner_of(metadata: Mapping[str, Any]) -> tuple[Owner, Owner | None]:
    """The owner a pod's images are reported on, and its controller when they differ."""
    pod = Owner("Pod", str(metadata.get("name", "")), "v1", str(metadata.get("uid") or ""))
    controller = _controller(metadata)
    if controller is None:
        return pod, None
    if controller.kind == "ReplicaSet" and controller.api_version.startswith("apps/"):
        labels = metadata.get("labels")
        template_hash = (
            labels.get(revisions.LABEL_POD_TEMPLATE_HASH) if isinstance(labels, Mapping) else None
        )
        suffix = f"-{template_hash}" if isinstance(template_hash, str) and template_hash else ""
        if suffix and controller.name.endswith(suffix) and len(controller.name) > len(suffix):
            deployment = Owner("Deployment", controller.name[: -len(suffix)], "apps/v1", "")
            return deployment, controller
    return controller, None


def _controller(metadata: Mapping[str, Any]) -> Owner | None:
    owner = revisions.controller_of(metadata)
    if owner is None:
        return None
    return Owner(owner.kind, owner.name, owner.api_version, owner.uid)


def queries(running: Iterable[Running]) -> set[outcomes.Query]:
    """What to ask the registry: each running digest (by `imageDigest`) and each tag they
    follow (by `imageTag`), once each however many pods run them."""
    asked: set[outcomes.Query] = set()
    for image in running:
        asked.add(image.digest_query)
        tag_query = image.tag_query
        if tag_query is not None:
            asked.add(tag_query)
    return asked


@dataclasses.dataclass(frozen=True)
class Finding:
    """One running image, its state, and what the registry said."""

    running: Running
    state: State
    detail: str
    pods: int
    tag_digest: references.Digest | None = None
    """What the tag resolves to now, when the registry said."""


LIFECYCLE_ACTIONS: Final[Mapping[str, str]] = {
    "EXPIRE": "expire",
    "TRANSITION": "move to the archive",
}


def classify(
    running: Running,
    pods: int,
    answers: Mapping[outcomes.Query, outcomes.Outcome],
    lifecycle_action: str | None = None,
) -> Finding:
    """The state of one running image, from the registry's answers to `queries` and the
    action a lifecycle policy preview shows for its digest, if any."""
    finding = _classify(running, pods, answers)
    if lifecycle_action is None or finding.state not in {State.CURRENT, State.TAG_MOVED}:
        return finding
    would = LIFECYCLE_ACTIONS.get(lifecycle_action, f"act on ({lifecycle_action})")
    return dataclasses.replace(
        finding,
        state=State.EXPIRING,
        detail=f"the repository's lifecycle policy would {would} it now; {finding.detail}",
    )


def _classify(
    running: Running, pods: int, answers: Mapping[outcomes.Query, outcomes.Outcome]
) -> Finding:
    said = answers.get(running.digest_query) or outcomes.Unknown("the registry gave no answer")
    if isinstance(said, outcomes.Missing):
        return Finding(running, State.GONE, f"{said.code}: {said.message}", pods)
    if isinstance(said, outcomes.NotImported):
        # A pull by digest through the cache fails until ECR holds the image again.
        return Finding(running, State.GONE, said.message, pods)
    if isinstance(said, outcomes.Archived):
        return Finding(running, State.ARCHIVED, said.message, pods)
    if isinstance(said, outcomes.Unknown | outcomes.Corrupt):
        return Finding(running, State.UNKNOWN, said.message, pods)
    tag_query = running.tag_query
    if tag_query is None:
        return Finding(running, State.CURRENT, "the digest exists", pods)
    tag_said = answers.get(tag_query) or outcomes.Unknown("the registry gave no answer")
    if isinstance(tag_said, outcomes.Found):
        if tag_said.digest == running.digest:
            return Finding(
                running, State.CURRENT, "the tag still resolves to it", pods, said.digest
            )
        return Finding(
            running,
            State.TAG_MOVED,
            f"the tag {running.tag} now resolves to {tag_said.digest}",
            pods,
            tag_said.digest,
        )
    if isinstance(tag_said, outcomes.Missing):
        return Finding(
            running,
            State.TAG_MOVED,
            f"the tag {running.tag} no longer exists ({tag_said.code})",
            pods,
        )
    if isinstance(tag_said, outcomes.Archived):
        return Finding(
            running, State.TAG_MOVED, f"the tag {running.tag} now names an archived image", pods
        )
    message = tag_said.message
    return Finding(running, State.UNKNOWN, f"the digest exists; the tag: {message}", pods)


def findings(
    inventory: Inventory,
    answers: Mapping[outcomes.Query, outcomes.Outcome],
    lifecycle_actions: Mapping[outcomes.Query, str] | None = None,
) -> list[Finding]:
    """Every running image's finding, sorted by namespace, owner, container and image;
    `lifecycle_actions` are the previews' actions by digest query."""
    acting = lifecycle_actions or {}
    found = [
        classify(running, pods, answers, acting.get(running.digest_query))
        for running, pods in inventory.running.items()
    ]
    found.sort(key=_finding_order)
    return found


def _finding_order(finding: Finding) -> tuple[str, ...]:
    running = finding.running
    return (
        running.namespace,
        running.owner.kind,
        running.owner.name,
        running.list_name,
        running.container,
        running.image,
        running.digest,
    )


def preview_digests(
    found: Iterable[Finding],
) -> dict[outcomes.Repository, set[references.Digest]]:
    """The ECR repositories whose lifecycle preview to read, with the running digests to
    read it for: those that exist (a gone or archived one is reported as such)."""
    wanted: dict[outcomes.Repository, set[references.Digest]] = {}
    for finding in found:
        repository = finding.running.repository
        if finding.state in {State.CURRENT, State.TAG_MOVED} and (
            references.parse_ecr_host(repository.registry) is not None
        ):
            wanted.setdefault(repository, set()).add(finding.running.digest)
    return wanted


def counts(found: Iterable[Finding]) -> dict[tuple[str, str, State], int]:
    """Running images per (namespace, owner kind, state): the audit's metric, whose labels
    never name a digest, an image or a pod."""
    counted: dict[tuple[str, str, State], int] = {}
    for finding in found:
        key = (finding.running.namespace, finding.running.owner.kind, finding.state)
        counted[key] = counted.get(key, 0) + 1
    return counted


def warning_message(finding: Finding) -> str:
    """The Warning Event text for a gone or archived image: what, where, and what to do."""
    running = finding.running
    image = f"{running.repository}@{running.digest}"
    pods = "1 pod runs" if finding.pods == 1 else f"{finding.pods} pods run"
    if finding.state is State.ARCHIVED:
        what = "is archived in ECR and cannot be pulled until it is restored"
        todo = f"Restore it ({finding.detail})"
    else:
        what = "no longer exists in the registry"
        todo = "Restore the image (push it again by digest), or roll out to an image that exists"
    rollout = (
        f" (kubectl -n {running.namespace} rollout restart"
        f" {running.owner.kind.lower()}/{running.owner.name} re-resolves the tag)"
        if running.owner.kind in {"Deployment", "StatefulSet", "DaemonSet"}
        and running.tag is not None
        else ""
    )
    return (
        f"container {running.container_label}: {pods} {image} (from {running.image}), which"
        f" {what}: a pod that starts again (node replaced, eviction) will fail to pull it."
        f" {todo}{rollout}. Registry: {text.clipped(finding.detail, 300)}"
    )
