"""What the resolver asks of a registry client, and the manifest types every client accepts.

Each client (ECR's `BatchGetImage`, the OCI distribution API) answers in the values of
`webhook.core.results`; this module is the contract between them and the resolver.
"""

import json
from collections.abc import Callable, Collection, Mapping
from typing import Final, Protocol, TypeAlias

from webhook.core import outcomes

OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPTED_MEDIA_TYPES: Final = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)
"""Sent with every manifest request: without them a registry may convert a manifest (to
Docker schema 1, or to one platform of an index), and the digest of a converted manifest
is not the one a kubelet pulls. With the index types accepted, a multi-arch image is
pinned by its index digest."""


RequestObserver: TypeAlias = Callable[[str], None]
"""Told the operation name of every registry request a client sends (retries included)."""


def declared_media_type(manifest: str | bytes) -> str:
    """The `mediaType` a manifest declares in its own JSON; empty when it declares none."""
    try:
        document = json.loads(manifest)
    except ValueError:
        return ""
    media_type = document.get("mediaType", "") if isinstance(document, dict) else ""
    return media_type if isinstance(media_type, str) else ""


class RegistryClient(Protocol):
    """The blocking calls a registry client offers; the resolver runs them in threads.

    Each call covers one repository and answers every query it was given; it raises
    `errors.RegistryError` when the call as a whole produced no per-image answer
    (unreachable, refused, or out of time).
    """

    def lookup(
        self,
        repository: outcomes.Repository,
        queries: Collection[outcomes.Query],
        *,
        timeout: float,
    ) -> Mapping[outcomes.Query, outcomes.Outcome]: ...

    def mutability(
        self, repository: outcomes.Repository, *, timeout: float
    ) -> outcomes.MutabilityOutcome: ...
