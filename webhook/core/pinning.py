"""Pinning manifests before they reach the cluster: which images, and what becomes of each.

The pure half of `digestguard pin`, in two steps around the resolver's I/O:

    targets(obj, rules)         ->  Targets   (the images to look up, where they are)
    judge(targets, results)     ->  Results   (rewrite to this / verified / missing / …)

A manifest is any object the webhook knows (a Pod, or a workload whose pod template it
validates: `containers.pod_spec_path`); its images are found by the one container walker.
Which images are pinned, and whether the tag is kept, follow the DigestPolicies exactly
as the mutating webhook reads them, with one difference that offline work forces: the
labels of a manifest's namespace are not known, so a `namespaceSelector` is matched
against labels given on the command line, or not at all (see `Rules`).
"""

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from webhook import errors, names
from webhook.core import containers, outcomes, policies, references, selectors

PathKey = str | int
"""One step from a document's root to a node: a mapping key or a list index."""

RESOURCE_LIST: Final = "ResourceList"
KRM_API_VERSIONS: Final = frozenset({"config.kubernetes.io/v1", "config.kubernetes.io/v1alpha1"})
PATH_ANNOTATIONS: Final = ("internal.config.kubernetes.io/path", "config.kubernetes.io/path")
INDEX_ANNOTATIONS: Final = ("internal.config.kubernetes.io/index", "config.kubernetes.io/index")


@dataclasses.dataclass(frozen=True)
class Rules:
    """Which images to pin and how.

    `digest_policies` None: every image is pinned, keeping its tag. Otherwise an image is pinned
    when at least one policy applies to it (`policies.applicable`: selectors, `images`,
    `excludeImages`), whatever its action, since pinning satisfies Mutate, Enforce and
    Audit alike; the tag is kept unless a Mutate policy that applies says `keepTag:
    false` (the webhook's rule), or, when no Mutate policy applies, any that does.

    `namespace_labels` None: namespace selectors are not matched at all (every policy
    is taken to select every namespace), since the labels of a manifest's namespace live
    in the cluster, not in the manifest. Given, they are the labels of every namespace.
    """

    digest_policies: tuple[policies.Policy, ...] | None = None
    namespace_labels: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.digest_policies is not None and self.namespace_labels is None:
            everywhere = selectors.LabelSelector()
            object.__setattr__(
                self,
                "digest_policies",
                tuple(
                    dataclasses.replace(policy, namespace_selector=everywhere)
                    for policy in self.digest_policies
                ),
            )


class Status(enum.Enum):
    VERIFIED = "verified"
    """Pinned by digest already, and the registry has that digest."""
    REWRITE = "rewrite"
    """Referenced by tag; `Result.value` is the pinned reference."""
    MISSING = "missing"
    """The registry says the tag or digest does not exist."""
    CORRUPT = "corrupt"
    """The registry's answer failed verification."""
    ARCHIVED = "archived"
    """In ECR's archive storage class: no node can pull it until it is restored."""
    NOT_IMPORTED = "not-imported"
    """An ECR pull-through cache image not imported yet: it has no digest to pin to."""
    UNKNOWN = "unknown"
    """The registry could not be asked or could not answer."""
    INVALID = "invalid"
    """Not a valid image reference."""


FAILED: Final = frozenset(
    {Status.MISSING, Status.CORRUPT, Status.ARCHIVED, Status.NOT_IMPORTED, Status.INVALID}
)


@dataclasses.dataclass(frozen=True)
class Resource:
    """What a message says about the object an image is in."""

    api_version: str
    kind: str
    name: str
    namespace: str

    @property
    def label(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


@dataclasses.dataclass(frozen=True)
class Target:
    """One container image of one object, with the path to its `image` scalar."""

    container: containers.ContainerImage
    path: tuple[PathKey, ...]
    """Keys from the document's root (not the object's: a ResourceList item is deeper)."""
    resource: Resource
    reference: references.ImageReference | None
    problem: str | None
    keep_tag: bool

    @property
    def lookup(self) -> outcomes.Query | None:
        if self.reference is None:
            return None
        return outcomes.existence_query(self.reference)

    @property
    def tag_check(self) -> outcomes.Query | None:
        """For `repo:tag@digest`: the query telling whether the tag still points there."""
        ref = self.reference
        if ref is None or ref.digest is None or ref.tag is None:
            return None
        return outcomes.Query(outcomes.Repository(ref.registry, ref.repository), tag=ref.tag)


@dataclasses.dataclass(frozen=True)
class Result:
    target: Target
    status: Status
    value: str | None
    """For REWRITE: the reference to write."""
    detail: str
    """Why, in words, for every status."""
    note: str | None = None
    """A warning that does not fail: a tag that has moved since it was pinned."""


def has_pod_spec(obj: Any) -> bool:
    """Whether `obj` is an object whose containers `digestguard pin` looks at."""
    return (
        isinstance(obj, Mapping) and containers.pod_spec_path(str(obj.get("kind", ""))) is not None
    )


def is_resource_list(obj: Any) -> bool:
    """Whether `obj` is a KRM function's input (`config.kubernetes.io/v1` ResourceList)."""
    return (
        isinstance(obj, Mapping)
        and obj.get("kind") == RESOURCE_LIST
        and obj.get("apiVersion") in KRM_API_VERSIONS
    )


def resource(obj: Mapping[str, Any]) -> Resource:
    metadata = obj.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    return Resource(
        api_version=str(obj.get("apiVersion", "")),
        kind=str(obj.get("kind", "")),
        name=str(metadata.get("name", "")),
        namespace=str(metadata.get("namespace", "") or ""),
    )


def annotation(obj: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    """The first of the annotations `keys` that `obj` carries."""
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    if not isinstance(annotations, Mapping):
        return None
    for key in keys:
        value = annotations.get(key)
        if value is not None:
            return str(value)
    return None


def targets(
    obj: Mapping[str, Any],
    rules: Rules,
    *,
    prefix: tuple[PathKey, ...] = (),
    plain_http: references.PlainHttpHosts = references.NO_PLAIN_HTTP,
) -> tuple[Target, ...]:
    """The images of `obj` to look up under `rules`; `prefix` is the path to `obj`."""
    if not has_pod_spec(obj):
        return ()
    found: list[Target] = []
    pod_labels = containers.pod_labels(obj)
    namespace_labels = rules.namespace_labels or {}
    for container in containers.walk(obj):
        try:
            reference: references.ImageReference | None = references.parse(
                container.image, plain_http=plain_http
            )
            problem = None
        except errors.InvalidReference as error:
            reference, problem = None, error.problem
        keep_tag = True
        if rules.digest_policies is not None:
            applicable = policies.applicable(
                rules.digest_policies,
                reference.name if reference is not None else None,
                namespace_labels,
                pod_labels,
            )
            if not applicable:
                continue
            mutating = [p for p in applicable if p.action is policies.Action.MUTATE]
            keep_tag = all(p.keep_tag for p in (mutating or applicable))
        found.append(
            Target(
                container=container,
                path=prefix + pointer_path(container.pointer),
                resource=resource(obj),
                reference=reference,
                problem=problem,
                keep_tag=keep_tag,
            )
        )
    return tuple(found)


def pointer_path(pointer: str) -> tuple[PathKey, ...]:
    """The keys of a JSON pointer the walker made (list indexes as ints)."""
    keys: list[PathKey] = []
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        keys.append(int(token) if token.isdigit() else token)
    return tuple(keys)


def queries(all_targets: Iterable[Target]) -> dict[outcomes.Query, float]:
    """Every query to resolve, once each (maxStale plays no part offline: 0)."""
    wanted: dict[outcomes.Query, float] = {}
    for target in all_targets:
        for query in (target.lookup, target.tag_check):
            if query is not None:
                wanted.setdefault(query, 0.0)
    return wanted


def judge(target: Target, results: Mapping[outcomes.Query, outcomes.Outcome]) -> Result:
    """What becomes of one image, given the registry's answers."""
    ref, lookup = target.reference, target.lookup
    if ref is None or lookup is None:
        return Result(target, Status.INVALID, None, f"not a valid reference: {target.problem}")
    outcome = results.get(lookup)
    if isinstance(outcome, outcomes.Missing):
        what = f"digest {ref.digest}" if ref.digest else f"tag {lookup.tag!r}"
        detail = f"{what} not found ({outcome.code}: {outcome.message})"
        return Result(target, Status.MISSING, None, detail)
    if isinstance(outcome, outcomes.Archived):
        return Result(
            target, Status.ARCHIVED, None, f"{outcome.message} [{names.REASON_IMAGE_ARCHIVED}]"
        )
    if isinstance(outcome, outcomes.NotImported):
        detail = (
            f"{outcome.message}; it has no digest in ECR until a first pull by tag imports it:"
            f" pin it after that [{names.REASON_NOT_IMPORTED}]"
        )
        return Result(target, Status.NOT_IMPORTED, None, detail)
    if isinstance(outcome, outcomes.Corrupt):
        return Result(target, Status.CORRUPT, None, f"{outcome.message} [{names.REASON_INTEGRITY}]")
    if not isinstance(outcome, outcomes.Found):
        message = outcome.message if outcome is not None else "no answer"
        return Result(target, Status.UNKNOWN, None, f"could not resolve the image: {message}")
    if ref.digest is not None:
        return Result(
            target,
            Status.VERIFIED,
            None,
            f"pinned, and {ref.digest} exists",
            _moved(target, results),
        )
    value = ref.pinned(outcome.digest, keep_tag=target.keep_tag)
    return Result(target, Status.REWRITE, value, f"not pinned by digest; pinned it is {value}")


def _moved(target: Target, results: Mapping[outcomes.Query, outcomes.Outcome]) -> str | None:
    check, ref = target.tag_check, target.reference
    if check is None or ref is None:
        return None
    now = results.get(check)
    if isinstance(now, outcomes.Found) and now.digest != ref.digest:
        return (
            f"the tag {ref.tag!r} now points to {now.digest}, not the pinned {ref.digest}"
            f" [{names.REASON_TAG_MOVED}]"
        )
    return None


def parse_policies(documents: Iterable[tuple[int, Any]]) -> tuple[policies.Policy, ...]:
    """The DigestPolicies among (line, document) pairs; other kinds are left out.

    Raises `InvalidManifest` naming the line and the field of a policy that does not
    parse, as the webhook would mark it invalid and not use it.
    """
    found: list[policies.Policy] = []
    for line, document in documents:
        if not isinstance(document, Mapping) or document.get("kind") != names.KIND:
            continue
        api_version = str(document.get("apiVersion", ""))
        if api_version != f"{names.GROUP}/{names.VERSION}":
            raise errors.InvalidManifest(
                line,
                f"a {names.KIND} has apiVersion {names.GROUP}/{names.VERSION}, not {api_version!r}",
            )
        policy_name = resource(document).name
        if not policy_name:
            raise errors.InvalidManifest(line, f"a {names.KIND} without metadata.name")
        try:
            found.append(policies.parse(policy_name, 1, document.get("spec")))
        except errors.InvalidPolicy as error:
            raise errors.InvalidManifest(line, f"{names.KIND} {policy_name}: {error}") from None
    return tuple(found)


def parse_labels(raw: str) -> dict[str, str]:
    """`k=v,k2=v2` as a label map, or raise `ConfigurationError`."""
    labels: dict[str, str] = {}
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry:
            continue
        key, equals, value = entry.partition("=")
        if not equals or not key.strip():
            raise errors.ConfigurationError(f"--namespace-labels: {entry!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels
