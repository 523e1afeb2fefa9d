"""Every error digestguard raises, in one tree.

    DigestguardError
    ├── InvalidReference      an image string that is not a valid reference
    ├── InvalidPolicy         a DigestPolicy spec that cannot be enforced
    ├── InvalidDuration       a duration string such as maxStale that does not parse
    ├── ConfigurationError    bad command-line flags or environment
    └── RegistryError         a registry call failed as a whole (could not tell)
        ├── DeadlineExceeded  the admission's time budget ran out
        └── NotAttempted      no call went out: no time left to start one

Per-image outcomes (found, missing, could not tell, digest mismatch) are values,
not exceptions: see `webhook.core.outcomes`. Errors turn into admission responses
only at the kopf edge (`webhook.serving.admission`).
"""


class DigestguardError(Exception):
    """Base of every error raised on purpose by digestguard."""


class InvalidReference(DigestguardError):
    """An image string that the OCI reference grammar does not accept."""

    def __init__(self, image: str, problem: str) -> None:
        super().__init__(f"invalid image reference {image!r}: {problem}")
        self.image = image
        self.problem = problem


class InvalidPolicy(DigestguardError):
    """A DigestPolicy whose spec cannot be enforced as written."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"spec.{field}: {problem}" if field else f"spec: {problem}")
        self.field = field
        self.problem = problem


class InvalidDuration(DigestguardError):
    """A duration string (such as `10m`) that does not parse."""


class ConfigurationError(DigestguardError):
    """Command-line flags or environment that cannot work together."""


class RegistryError(DigestguardError):
    """A registry call failed as a whole; the images it asked about are unknown."""


class DeadlineExceeded(RegistryError):
    """The time budget of an admission ran out before the registry answered."""


class NotAttempted(RegistryError):
    """No registry call was made (the deadline passed before one could start): this says
    nothing about the registry, so its circuit breaker does not count it."""
