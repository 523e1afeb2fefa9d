"""What a registry can say about an image: the values passed between resolver and core.

A lookup of one image ends in exactly one of these outcomes:

    Found      the image exists; here is its digest
    Missing    the registry says it does not exist (deny under Mutate/Enforce)
    Archived   it exists in ECR's archive storage class: no node can pull it until it
               is restored (deny under Mutate/Enforce, whatever onResolveError says)
    NotImported  a tag of an ECR pull-through cache repository that ECR does not hold
               and could not import, but that the upstream registry has: it can be
               pulled by tag (ECR imports it then), not pinned to a digest yet
    Unknown    the registry could not be asked or could not answer (onResolveError)
    Corrupt    the registry's answer failed verification (deny, never accepted)
"""

import dataclasses
import enum
import fnmatch

from webhook.core import references


@dataclasses.dataclass(frozen=True)
class Repository:
    """One repository of one registry: the unit of a BatchGetImage call."""

    registry: str
    name: str

    def __str__(self) -> str:
        return f"{self.registry}/{self.name}"


@dataclasses.dataclass(frozen=True)
class Query:
    """One image to look up, by tag or by digest (exactly one of them)."""

    repository: Repository
    tag: str | None = None
    digest: references.Digest | None = None
    scope: str = ""
    """The credentials it is asked with: empty for the webhook's own (or none), else a
    pod namespace's pull Secret (`namespace/name@resourceVersion`). Part of every cache
    key: an answer got with one namespace's Secret is never another's. Never shown."""

    def __str__(self) -> str:
        if self.digest is not None:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag}"


IMPLICIT_TAG = "latest"
"""The tag a container runtime pulls when a reference names none."""


def existence_query(reference: references.ImageReference) -> Query:
    """The query whose outcome says whether `reference` exists: its digest, else its tag."""
    repository = Repository(reference.registry, reference.repository)
    if reference.digest is not None:
        return Query(repository, digest=reference.digest)
    return Query(repository, tag=reference.tag or IMPLICIT_TAG)


@dataclasses.dataclass(frozen=True)
class Found:
    digest: references.Digest
    media_type: str
    age_seconds: float = 0.0
    """How long ago the registry said so; above zero only for a stale answer."""


@dataclasses.dataclass(frozen=True)
class Missing:
    code: str
    message: str


@dataclasses.dataclass(frozen=True)
class Archived:
    """An image ECR holds in its archive storage class (`status` ARCHIVED), or is
    restoring from it (ACTIVATING): an answer about the image, not a registry failure."""

    status: str
    message: str
    """Names the image and says how to restore it."""


@dataclasses.dataclass(frozen=True)
class NotImported:
    """An image the upstream registry of an ECR pull-through cache rule has, and ECR does
    not hold yet: a first pull through the cache works by tag and fails by digest."""

    message: str
    """Names the rule (prefix and upstream) and why the webhook could not import it."""


@dataclasses.dataclass(frozen=True)
class Unknown:
    message: str


@dataclasses.dataclass(frozen=True)
class Corrupt:
    message: str


Outcome = Found | Missing | Archived | NotImported | Unknown | Corrupt


class Mutability(enum.Enum):
    MUTABLE = "MUTABLE"
    IMMUTABLE = "IMMUTABLE"
    IMMUTABLE_WITH_EXCLUSION = "IMMUTABLE_WITH_EXCLUSION"
    MUTABLE_WITH_EXCLUSION = "MUTABLE_WITH_EXCLUSION"


@dataclasses.dataclass(frozen=True)
class TagMutability:
    """A repository's tag mutability setting, with its exclusion filters (wildcards)."""

    mode: Mutability
    exclusions: tuple[str, ...] = ()

    def is_immutable(self, tag: str) -> bool:
        excluded = any(fnmatch.fnmatchcase(tag, pattern) for pattern in self.exclusions)
        if self.mode is Mutability.IMMUTABLE:
            return True
        if self.mode is Mutability.IMMUTABLE_WITH_EXCLUSION:
            return not excluded
        if self.mode is Mutability.MUTABLE_WITH_EXCLUSION:
            return excluded
        return False


MutabilityOutcome = TagMutability | Unknown
