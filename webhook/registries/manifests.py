"""The one manifest-digest check of the registry clients: bytes proven to hash to a digest.

A digest is pinned only once the manifest's own bytes hash to it, whichever client
fetched them (ECR's `imageManifest`, the body of a distribution `GET`): a registry,
a proxy or a cache that answers with other bytes is an integrity failure.
"""

import hashlib
from typing import Final

from webhook.core import outcomes, references

ALGORITHMS: Final = frozenset({"sha256", "sha384", "sha512"})
"""The digest algorithms of the OCI image spec, the only ones a digest is checked with."""


def sha256_digest(manifest: bytes) -> references.Digest:
    """The digest a runtime computes for `manifest` when nobody names one."""
    return references.Digest("sha256:" + hashlib.sha256(manifest).hexdigest())


def verified(
    manifest: bytes, digest: str, media_type: str, *, source: str
) -> outcomes.Found | outcomes.Corrupt:
    """`Found(digest)` once `manifest` hashes to `digest`; `Corrupt` when it does not, or
    when `digest` cannot be checked. `source` says where the manifest came from, for
    the message (`"the manifest ECR returned for team/app@sha256:…"`)."""
    algorithm, _, expected = digest.partition(":")
    if algorithm not in ALGORITHMS or not expected:
        return outcomes.Corrupt(f"{source}: the digest {digest!r} cannot be verified")
    actual = hashlib.new(algorithm, manifest).hexdigest()
    if actual != expected.lower():
        return outcomes.Corrupt(
            f"{source} is said to be {digest} but hashes to {algorithm}:{actual}:"
            " integrity check failed"
        )
    return outcomes.Found(references.Digest(digest), media_type)
