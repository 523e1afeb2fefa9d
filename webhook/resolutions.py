"""What a registry can say about an image: the values passed between resolver and core.

A lookup of one image ends in exactly one of four outcomes:

    Found      the image exists; here is its digest
    Missing    the registry says it does not exist (deny under Mutate/Enforce)
    Unknown    the registry could not be asked or could not answer (onResolveError)
    Corrupt    the registry's answer failed verification (deny, never accepted)
"""

import dataclasses
import enum
import fnmatch
import json
from collections.abc import Collection, Mapping
from typing import Final, Protocol

from webhook import references


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

    def __str__(self) -> str:
        if self.digest is not None:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag}"


OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPTED_MEDIA_TYPES: Final = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)
"""Sent with every manifest request: without them a registry may convert a manifest (to
Docker schema 1, or to one platform of an index), and the digest of a converted manifest
is not the one a kubelet pulls. With the index types accepted, a multi-arch image is
pinned by its index digest."""


def declared_media_type(manifest: str | bytes) -> str:
    """The `mediaType` a manifest declares in its own JSON; empty when it declares none."""
    try:
        document = json.loads(manifest)
    except ValueError:
        return ""
    media_type = document.get("mediaType", "") if isinstance(document, dict) else ""
    return media_type if isinstance(media_type, str) else ""


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
class Unknown:
    message: str


@dataclasses.dataclass(frozen=True)
class Corrupt:
    message: str


Outcome = Found | Missing | Unknown | Corrupt


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


class RegistryClient(Protocol):
    """The blocking calls a registry client offers; the resolver runs them in threads.

    Each call covers one repository and answers every query it was given; it raises
    `errors.RegistryError` when the call as a whole produced no per-image answer
    (unreachable, refused, or out of time).
    """

    def lookup(
        self, repository: Repository, queries: Collection[Query], *, timeout: float
    ) -> Mapping[Query, Outcome]: ...

    def mutability(self, repository: Repository, *, timeout: float) -> MutabilityOutcome: ...
