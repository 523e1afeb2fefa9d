"""Which client answers for which registry: ECR private hosts to ECR, the rest to OCI.

The resolver holds one `protocol.RegistryClient`; `RoutingClient` is that client
and sends each call to the client of the repository's registry. Amazon ECR private
registries (`<account>.dkr.ecr.<region>.amazonaws.com` and their FIPS, dual-stack,
China, GovCloud and ISO forms) are asked with `BatchGetImage`; every other registry,
ECR Public (`public.ecr.aws`) included, is a generic OCI distribution registry.
"""

from collections.abc import Collection, Mapping

from webhook.core import outcomes, references
from webhook.registries import protocol


def is_ecr_private(registry: str) -> bool:
    """Whether `registry` is an Amazon ECR private registry host (answered by BatchGetImage)."""
    return references.parse_ecr_host(registry) is not None


class RoutingClient:
    """A `protocol.RegistryClient` that hands each repository to the client of its registry."""

    def __init__(
        self, ecr_client: protocol.RegistryClient, oci_client: protocol.RegistryClient
    ) -> None:
        self._ecr = ecr_client
        self._oci = oci_client

    def client_for(self, registry: str) -> protocol.RegistryClient:
        return self._ecr if is_ecr_private(registry) else self._oci

    def lookup(
        self,
        repository: outcomes.Repository,
        queries: Collection[outcomes.Query],
        *,
        timeout: float,
    ) -> Mapping[outcomes.Query, outcomes.Outcome]:
        return self.client_for(repository.registry).lookup(repository, queries, timeout=timeout)

    def mutability(
        self, repository: outcomes.Repository, *, timeout: float
    ) -> outcomes.MutabilityOutcome:
        return self.client_for(repository.registry).mutability(repository, timeout=timeout)
