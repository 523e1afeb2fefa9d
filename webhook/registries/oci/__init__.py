"""The OCI distribution client, by concern: `client` (what each answer means), `auth`
(the anonymous Bearer token flow) and `transport` (connections, redirects, limits)."""

from webhook.registries.oci.client import OciClient

__all__ = ["OciClient"]
