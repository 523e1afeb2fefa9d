"""The one container walker: every image of a pod or a workload's pod template."""

import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any, Final

from webhook import names
from webhook.core import text

CONTAINER_LISTS: Final = ("initContainers", "containers", "ephemeralContainers")

# Where the pod spec lives inside each kind of object, as a path of keys.
_POD_SPEC_PATHS: Final[Mapping[str, tuple[str, ...]]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
_POD_METADATA_PATHS: Final[Mapping[str, tuple[str, ...]]] = {
    kind: (*path[:-1], "metadata") for kind, path in _POD_SPEC_PATHS.items()
}


@dataclasses.dataclass(frozen=True)
class ContainerImage:
    """One container's image, with the JSON pointer of its `image` field."""

    list_name: str
    index: int
    container: str
    image: str
    pointer: str

    @property
    def label(self) -> str:
        """How messages name the container: `containers[app]`."""
        return f"{self.list_name}[{text.clipped(self.container)}]"

    @property
    def shown_image(self) -> str:
        """The image as messages and logs quote it: cut short if it is very long."""
        return text.quoted(self.image)


def pod_spec_path(kind: str) -> tuple[str, ...] | None:
    """The keys leading to the pod spec of `kind`, or None for kinds without one."""
    return _POD_SPEC_PATHS.get(kind)


def pod_spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod spec of `obj` (a pod's, or a workload's template's); empty when it has none."""
    path = _POD_SPEC_PATHS.get(str(obj.get("kind", "")), ("spec",))
    return _descend(obj, path) or {}


def pod_labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    """The labels the pods of `obj` carry (for a workload: its template's labels)."""
    path = _POD_METADATA_PATHS.get(str(obj.get("kind", "")), ("metadata",))
    metadata = _descend(obj, path)
    labels = metadata.get("labels") if metadata is not None else None
    if not isinstance(labels, Mapping):
        return {}
    return {str(k): str(v) for k, v in labels.items()}


def walk(obj: Mapping[str, Any]) -> Iterator[ContainerImage]:
    """Yield every container image in `obj`, a Pod or a workload, in spec order.

    Malformed parts (a list that is not a list, a container without an image)
    are skipped: the apiserver's own validation reports them better than we can.
    """
    path = pod_spec_path(str(obj.get("kind", "")))
    if path is None:
        return
    spec = _descend(obj, path)
    if spec is None:
        return
    prefix = "".join(f"/{key}" for key in path)
    for list_name in CONTAINER_LISTS:
        containers = spec.get(list_name)
        if not isinstance(containers, list):
            continue
        for index, container in enumerate(containers):
            if not isinstance(container, Mapping):
                continue
            image = container.get("image")
            if not isinstance(image, str) or not image:
                continue
            yield ContainerImage(
                list_name=list_name,
                index=index,
                container=str(container.get("name", index)),
                image=image,
                pointer=f"{prefix}/{list_name}/{index}/image",
            )


def original_key(container: ContainerImage) -> str:
    """The key of `container` in the `original-images` annotation: `containers/app`."""
    return f"{container.list_name}/{container.container}"


def original_images(obj: Mapping[str, Any]) -> dict[str, str]:
    """The `original-images` annotation of `obj`: what each pinned container was written as."""
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    raw = (
        annotations.get(names.ANNOTATION_ORIGINAL_IMAGES)
        if isinstance(annotations, Mapping)
        else None
    )
    if not isinstance(raw, str):
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {str(k): str(v) for k, v in parsed.items() if isinstance(v, str)}


def _descend(obj: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any] | None:
    node: Any = obj
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node if isinstance(node, Mapping) else None
