"""Every name shared between the code, the chart and the tests, defined once.

The chart's webhook paths are the handler ids below; `tests/integration/test_chart_render.py`
fails if the rendered webhook configurations drift from them.
"""

from typing import Final

GROUP: Final = "digestguard.io"
VERSION: Final = "v1alpha1"
KIND: Final = "DigestPolicy"
PLURAL: Final = "digestpolicies"
SHORT_NAME: Final = "dgp"
POLICY_RESOURCE: Final = f"{PLURAL}.{GROUP}"

COMPONENT: Final = "digestguard"
"""How Events and field managers name the webhook."""

ANNOTATION_ORIGINAL_IMAGES: Final = f"{GROUP}/original-images"
LABEL_EXCLUDE_NAMESPACE: Final = f"{GROUP}/exclude"

# Handler ids double as the URL paths of the webhook configurations.
MUTATE_PODS: Final = "mutate-pods"
VALIDATE_PODS: Final = "validate-pods"
MUTATE_EPHEMERAL: Final = "mutate-ephemeralcontainers"
VALIDATE_EPHEMERAL: Final = "validate-ephemeralcontainers"

# (handler id, API group, version, plural) of every workload whose template is checked.
WORKLOADS: Final[tuple[tuple[str, str, str, str], ...]] = (
    ("validate-deployments", "apps", "v1", "deployments"),
    ("validate-statefulsets", "apps", "v1", "statefulsets"),
    ("validate-daemonsets", "apps", "v1", "daemonsets"),
    ("validate-replicasets", "apps", "v1", "replicasets"),
    ("validate-replicationcontrollers", "", "v1", "replicationcontrollers"),
    ("validate-jobs", "batch", "v1", "jobs"),
    ("validate-cronjobs", "batch", "v1", "cronjobs"),
)

# Which (API group, plural, subresource) each handler id accepts; anything else sent to
# a path is refused, so a misrouted webhook configuration never admits silently.
ROUTES: Final[dict[str, frozenset[tuple[str, str, str | None]]]] = {
    MUTATE_PODS: frozenset({("", "pods", None)}),
    VALIDATE_PODS: frozenset({("", "pods", None)}),
    MUTATE_EPHEMERAL: frozenset({("", "pods", "ephemeralcontainers")}),
    VALIDATE_EPHEMERAL: frozenset({("", "pods", "ephemeralcontainers")}),
    **{handler: frozenset({(group, plural, None)}) for handler, group, _, plural in WORKLOADS},
}

MUTATING_HANDLERS: Final = (MUTATE_PODS, MUTATE_EPHEMERAL)
VALIDATING_HANDLERS: Final = (VALIDATE_PODS, VALIDATE_EPHEMERAL, *(w[0] for w in WORKLOADS))
ALL_HANDLERS: Final = MUTATING_HANDLERS + VALIDATING_HANDLERS

# Reasons in policy status conditions.
REASON_ACCEPTED: Final = "Accepted"
REASON_INVALID: Final = "InvalidSpec"

# Reasons carried by denials and warnings; each is also a metric label value.
REASON_IMAGE_MISSING: Final = "ImageMissing"
REASON_IMAGE_ARCHIVED: Final = "ImageArchived"
REASON_NOT_IMPORTED: Final = "NotImportedThroughCache"
REASON_TAG_NOT_PINNED: Final = "TagNotPinned"
REASON_REGISTRY_UNAVAILABLE: Final = "RegistryUnavailable"
REASON_INTEGRITY: Final = "DigestMismatch"
REASON_INVALID_REFERENCE: Final = "InvalidImageReference"
REASON_TAG_MOVED: Final = "TagMoved"
REASON_STALE_DIGEST: Final = "StaleDigest"
REASON_REVISION_KEPT: Final = "RevisionDigestKept"
REASON_REVISION_DIGEST_GONE: Final = "RevisionDigestGone"
REASON_REVISION_UNREAD: Final = "RevisionUnread"

# Reasons of the running-image audit's Warning Events.
REASON_RUNNING_IMAGE_GONE: Final = "RunningImageGone"
REASON_RUNNING_IMAGE_ARCHIVED: Final = "RunningImageArchived"

AUDIT_LEASE_NAME: Final = "digestguard-audit"
"""The default name of the Lease whose holder runs the periodic audit."""
