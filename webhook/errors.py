"""Every error digestguard raises, in one tree.

    DigestguardError
    ├── InvalidReference      an image string that is not a valid reference
    ├── InvalidPolicy         a DigestPolicy spec that cannot be enforced
    ├── InvalidDuration       a duration string such as maxStale that does not parse
    ├── InvalidReview         an HTTP body that is not a usable AdmissionReview request
    ├── InvalidCertificate    bytes that are not the PEM certificate or key they should be
    ├── ConfigurationError    bad command-line flags or environment
    ├── InvalidManifest       a manifest or policy file that is not usable YAML, by file and line
    ├── KubernetesError       a Kubernetes API call failed (never a raw client exception)
    │   ├── Conflict          someone else wrote first (HTTP 409): read again, decide again
    │   └── ReconcileError    the TLS Secret kept changing under us
    ├── Retryable             one registry attempt failed in a way the next may not
    └── RegistryError         a registry call failed as a whole (could not tell)
        ├── DeadlineExceeded  the admission's time budget ran out
        ├── NotAttempted      no call went out: no time left to start one
        ├── ErrorResponse     an error answer no retry changes, with the registry's code
        └── Refused           the registry will not show the repository, or redirects
                              somewhere it must not go

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


class InvalidReview(DigestguardError):
    """An HTTP body that is not a usable AdmissionReview request; `uid` when it had one."""

    def __init__(self, message: str, uid: str = "") -> None:
        super().__init__(message)
        self.uid = uid


class InvalidCertificate(DigestguardError):
    """Bytes that are not the PEM certificate (or key) they should be."""


class ConfigurationError(DigestguardError):
    """Command-line flags or environment that cannot work together."""


class InvalidManifest(DigestguardError):
    """A manifest (or policy file) that cannot be read: `line` counts from 1, None if unknown."""

    def __init__(self, line: int | None, problem: str, source: str = "") -> None:
        self.line = line
        self.problem = problem
        self.source = source
        where = source
        if line is not None:
            where = f"{source}:{line}" if source else f"line {line}"
        super().__init__(f"{where}: {problem}" if where else problem)


class KubernetesError(DigestguardError):
    """A Kubernetes API call failed; `status` is the HTTP status (0 when none came)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Conflict(KubernetesError):
    """Someone else wrote the object first (HTTP 409)."""


class ReconcileError(KubernetesError):
    """The TLS Secret kept changing under us; the round gave up."""


class Retryable(DigestguardError):
    """A failure of one registry attempt that another attempt may not have: 429, 5xx, a
    connection error or a timeout. `retry_after` is the server's least pause, when it
    gave one. `webhook.registries.retries.call` is the only place that catches it."""

    def __init__(
        self,
        problem: str,
        *,
        retry_after: float | None = None,
        throttled: bool = False,
        refused: bool = False,
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after
        self.throttled = throttled
        self.refused = refused
        """The connection was refused: nothing listens there. Tried again once (an
        endpoint restarting), not until the budget is spent."""


def connection_refused(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, is a refused connection."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionRefusedError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return "[Errno 111]" in str(exc) or "Connection refused" in str(exc)


class RegistryError(DigestguardError):
    """A registry call failed as a whole; the images it asked about are unknown."""


class DeadlineExceeded(RegistryError):
    """The time budget of an admission ran out before the registry answered."""


class NotAttempted(RegistryError):
    """No registry call was made (the deadline passed before one could start): this says
    nothing about the registry, so its circuit breaker does not count it."""


class ErrorResponse(RegistryError):
    """The registry answered with an error that another attempt would not change; `code`
    is the registry's name for it (such as ECR's `RepositoryNotFoundException`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Refused(RegistryError):
    """The registry will not show this repository to us, or sends us somewhere we must not
    go (a plain-HTTP origin that is not allowed, a URL that is not HTTP)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
