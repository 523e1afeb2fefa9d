"""Which client answers for which registry: ECR private hosts to ECR, the rest to OCI.

The resolver holds one `resolutions.RegistryClient`; `RoutingClient` is that client
and sends each call to the client of the repository's registry. Amazon ECR private
registries (`<account>.dkr.ecr.<region>.amazonaws.com` and their FIPS, dual-stack,
China, GovCloud and ISO forms) are asked with `BatchGetImage`; every other registry,
ECR Public (`public.ecr.aws`) included, is a generic OCI distribution registry.
"""

from collections.abc import Collection, Mapping

from webhook import references, resolutions


def is_ecr_private(registry: str) -> bool:
    """Whether `registry` is an Amazon ECR private registry host (answered by BatchGetImage)."""
    return references.parse_ecr_host(registry) is not None


class RoutingClient:
    """A `resolutions.RegistryClient` that hands each repository to the client of its registry."""

    def __init__(
        self, ecr_client: resolutions.RegistryClient, oci_client: resolutions.RegistryClient
    ) -> None:
        self._ecr = ecr_client
        self._oci = oci_client

    def client_for(self, registry: str) -> resolutions.RegistryClient:
        return self._ecr if is_ecr_private(registry) else self._oci

    def lookup(
        self,
        repository: resolutions.Repository,
        queries: Collection[resolutions.Query],
        *,
        timeout: float,
    ) -> Mapping[resolutions.Query, resolutions.Outcome]:
        return self.client_for(repository.registry).lookup(repository, queries, timeout=timeout)

    def mutability(
        self, repository: resolutions.Repository, *, timeout: float
    ) -> resolutions.MutabilityOutcome:
        return self.client_for(repository.registry).mutability(repository, timeout=timeout)
