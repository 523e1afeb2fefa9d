"""Lookups for the command line (`resolve`, `pin`): the webhook's resolver, built once.

The clients are the webhook's own, with credentials from the user's environment:
boto3's default chain for ECR; for every other registry the token flow, with the
Basic credentials of the user's Docker config (`oci.dockerconfig`) where it has some.
"""

import asyncio
import time
from collections.abc import Mapping

from webhook.core import outcomes, references
from webhook.registries import ecr, oci, protocol, resolver, routing
from webhook.registries.oci import dockerconfig


def lookup(
    queries: Mapping[outcomes.Query, float],
    *,
    budget: float,
    ecr_endpoint_url: str | None = None,
    plain_http: references.PlainHttpHosts = references.NO_PLAIN_HTTP,
    ca_file: str | None = None,
    credentials: dockerconfig.Credentials | None = None,
) -> dict[outcomes.Query, outcomes.Outcome]:
    """The outcome of every query, all asked at once within `budget` seconds."""
    if not queries:
        return {}
    oci_client = oci.OciClient(
        insecure_registries=plain_http, ca_file=ca_file, credentials=credentials
    )
    client = routing.RoutingClient(
        ecr.EcrClient(endpoint_url=ecr_endpoint_url, upstream=oci_client), oci_client
    )
    try:
        return asyncio.run(_resolve(queries, client, budget))
    finally:
        oci_client.close()


async def _resolve(
    queries: Mapping[outcomes.Query, float], client: protocol.RegistryClient, budget: float
) -> dict[outcomes.Query, outcomes.Outcome]:
    the_resolver = resolver.Resolver(client)
    try:
        return dict(await the_resolver.resolve(queries, deadline=time.monotonic() + budget))
    finally:
        await the_resolver.aclose()
