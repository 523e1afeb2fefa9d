"""The Amazon ECR client: the only module that imports boto3 and botocore.

`EcrClient` implements `protocol.RegistryClient` with blocking calls:
`BatchGetImage` (one per repository, up to 100 images each), `DescribeRepositories`,
`DescribeImages` for the images BatchGetImage cannot read (archived ones) and
`DescribePullThroughCacheRules` once an image is not returned. The resolver runs them
in its thread pool.

What each ECR answer becomes (`Missing` denies under Mutate/Enforce, `Unknown` goes
to the policy's `onResolveError`):

    ECR says                              outcome   why
    ────────────────────────────────────  ────────  ─────────────────────────────────
    image returned, digest verified       Found     sha256(imageManifest) == imageDigest
    image returned, digest differs        Corrupt   integrity failure, never accepted
    failure ImageNotFound                 Missing   ECR is the authority on its images
    failure ImageTagDoesNotMatchDigest    Missing   the tag/digest pair names no image
    failure InvalidImageTag               Missing   no image can have that tag
    failure InvalidImageDigest            Missing   no image can have that digest
    failure MissingDigestAndTag           Missing   the reference names no image
    failure KmsError                      Unknown   the image exists; its key is unusable
    failure UpstreamAccessDenied          Unknown   pull-through cache: upstream refused us,
    failure UpstreamTooManyRequests       Unknown     throttled us or is down — whether the
    failure UpstreamUnavailable           Unknown     image exists upstream is not known
    failure ImageInaccessible, and        Archived  in the archive storage class, or being
      DescribeImages says ARCHIVED or               restored from it: no node can pull it
      ACTIVATING                                    until it is restored
    failure ImageInaccessible otherwise   Unknown   it exists but cannot be read now, or
                                                    DescribeImages could not say why
    any other failure code                Unknown   never deny on a code we do not know
    image not mentioned in the answer     Unknown   ECR did not say
    RepositoryNotFoundException           Missing   for every image asked (RepositoryNotFound)
    repository name ECR cannot hold       Missing   checked locally, no call (InvalidRepositoryName)
    InvalidParameterException             error     our request was malformed: a bug or an
                                                    ECR rule we do not know, not a fact
                                                    about the image
    AccessDeniedException                 error     names the IAM action to grant
    ThrottlingException,                  retried   full-jitter exponential backoff while
    LimitExceededException,                         the call's time budget allows another
    ServerException,                                attempt, then error
    connection errors and timeouts
    UnableToGetUpstreamImageException     error     not retried: "usually" the upstream
                                                    credential in Secrets Manager (API model)
    missing credentials, any other error  error

Under a pull-through cache rule, an image ECR returned (held, or imported by this very
BatchGetImage) is Found as above: ECR holds it, so a pull by digest works. One it did
not return (a Missing or Unknown above other than KmsError and ImageInaccessible, which
are about an image ECR holds, or an error of the whole call) is asked of the rule's
upstream registry through `upstream`, and is never pinned:

    the upstream says                     outcome      why
    ────────────────────────────────────  ───────────  ──────────────────────────────
    found                                 NotImported  a first pull by tag imports it;
                                                       by digest it fails
    not found                             Missing      neither ECR nor the upstream has it
    could not tell                        Unknown      onResolveError decides

Each message names the rule (prefix and upstream) and the likely cause: the missing
IAM action, or the upstream credential in Secrets Manager.

`ImageInaccessible` is the only sign BatchGetImage gives of an archived image, and
the API model does not say it means only that, so the image's status is read with
one DescribeImages of the images that got it (needs `ecr:DescribeImages`; the
common path never makes that call). That answer is a fact about the image: it is
not retried in the background and does not count against the circuit breaker.

Pull-through cache rules (`DescribePullThroughCacheRules`, needs
`ecr:DescribePullThroughCacheRules`) are read only once an image is not returned,
and kept per registry for `RULES_TTL`; a registry that will not show them is
treated as having none (logged).

"error" means `errors.RegistryError` is raised: the call as a whole produced no
per-image answer, which is the `RegistryClient` contract; the resolver turns it
into `Unknown` (carrying the message) for every image of the call. A failure code
of one image is never retried inside the call: the resolver does not cache
`Unknown`, so the next admission asks again, and hammering an upstream that says
it is throttled or down would not help it.

botocore's own retries are off (one attempt per request): the budget-aware retry
loop here is the only one, so no attempt starts once the caller's time budget is
spent; an attempt already running is bounded by the connect and read timeouts.
"""

import dataclasses
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from webhook import errors, metrics
from webhook.core import outcomes, references
from webhook.registries import manifests, protocol, retries

if TYPE_CHECKING:
    from types_boto3_ecr.client import ECRClient
    from types_boto3_ecr.type_defs import ImageIdentifierTypeDef

logger = logging.getLogger("digestguard.ecr")

_T = TypeVar("_T")

BATCH_GET_IMAGE: Final = "BatchGetImage"
DESCRIBE_REPOSITORIES: Final = "DescribeRepositories"
DESCRIBE_IMAGES: Final = "DescribeImages"
DESCRIBE_PULL_THROUGH_CACHE_RULES: Final = "DescribePullThroughCacheRules"
START_LIFECYCLE_POLICY_PREVIEW: Final = "StartLifecyclePolicyPreview"
GET_LIFECYCLE_POLICY_PREVIEW: Final = "GetLifecyclePolicyPreview"
PREVIEW_POLL_SECONDS: Final = 1.0
"""How often a lifecycle policy preview in progress is asked whether it completed."""
RULES_TTL: Final = 600.0
"""Seconds a registry's pull-through cache rules (or the refusal to show them) are kept."""
UPDATE_IMAGE_STORAGE_CLASS_CLI: Final = "aws ecr update-image-storage-class"

IMAGE_INACCESSIBLE: Final = "ImageInaccessible"
"""The BatchGetImage failure code of an image that exists but cannot be read (archived)."""
HELD_FAILURE_CODES: Final = frozenset({IMAGE_INACCESSIBLE, "KmsError"})
"""Failure codes about an image ECR holds: under a pull-through cache rule, not a reason
to ask the upstream (a tag it has would be admitted, then fail to pull)."""
ARCHIVED: Final = "ARCHIVED"
ACTIVATING: Final = "ACTIVATING"
"""DescribeImages' `imageStatus` of an image being restored from the archive."""

MAX_IMAGE_IDS: Final = 100
"""BatchGetImage accepts at most this many imageIds in one request."""

MISSING_FAILURE_CODES: Final = frozenset(
    {
        "ImageNotFound",
        "ImageTagDoesNotMatchDigest",
        "InvalidImageTag",
        "InvalidImageDigest",
        "MissingDigestAndTag",
    }
)
"""BatchGetImage failure codes that say the image does not exist; every other code is Unknown."""

REPOSITORY_NOT_FOUND: Final = "RepositoryNotFound"
INVALID_REPOSITORY_NAME: Final = "InvalidRepositoryName"

_THROTTLING_CODES: Final = frozenset(
    {"ThrottlingException", "LimitExceededException", "TooManyRequestsException"}
)
# Not UnableToGetUpstreamImageException: the API model says it is "usually caused" by
# the upstream credential in Secrets Manager, which no retry within an admission mends.
_RETRYABLE_CODES: Final = _THROTTLING_CODES | {
    "ServerException",
    "ServiceUnavailableException",
    "InternalFailure",
}
_CREDENTIAL_ERRORS: Final = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.TokenRetrievalError,
)
_TRANSPORT_ERRORS: Final = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
)

# The repository-name rule of the ECR API model: a name the OCI grammar accepts but
# ECR cannot hold (one character, for example) names no image.
_ECR_REPOSITORY_NAME: Final = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
_ECR_REPOSITORY_NAME_LENGTH: Final = range(2, 257)


@dataclasses.dataclass(frozen=True)
class PullThroughRule:
    """A pull-through cache rule: ECR repositories under `prefix` cache `upstream_url`."""

    prefix: str
    """The ECR repository prefix without its trailing `/`; empty for ECR's `ROOT`."""
    upstream_url: str
    upstream_prefix: str = ""
    """The upstream repository prefix (ECR-to-ECR rules); empty for none or `ROOT`."""
    credential_arn: str = ""
    """The Secrets Manager secret holding the upstream credential, if the rule has one."""

    def covers(self, name: str) -> bool:
        return not self.prefix or name.startswith(f"{self.prefix}/")

    def upstream(self, name: str) -> outcomes.Repository:
        """Where the upstream registry keeps the image of ECR repository `name`."""
        rest = name[len(self.prefix) + 1 :] if self.prefix else name
        host = self.upstream_url.removeprefix("https://").rstrip("/")
        return outcomes.Repository(
            host, f"{self.upstream_prefix}/{rest}" if self.upstream_prefix else rest
        )

    def __str__(self) -> str:
        return f"pull-through cache rule {self.prefix or 'ROOT'}/ -> {self.upstream_url}"


@dataclasses.dataclass(frozen=True)
class _ClientKey:
    region: str
    fips: bool
    dualstack: bool


class EcrClient:
    """Blocking ECR calls with budget-bounded retries; one instance serves every region.

    boto3 clients are created lazily, one per (region, FIPS, dual-stack) — the
    partition follows from the region — and shared by all threads (low-level
    clients are thread-safe; creating them from one session is not, hence the lock).
    Credentials come from boto3's default chain (IRSA, EKS Pod Identity, …) unless a
    `session` is passed in (tests pass one with fake keys). `endpoint_url` points
    every client at one endpoint (an emulator); FIPS and dual-stack do not apply then.

    `upstream` answers for the upstream registries of pull-through cache rules (the OCI
    client): a repository under a rule whose image ECR does not hold and this lookup
    could not import is never pinned; the upstream says whether the tag exists.
    `on_request` is told the operation of every request sent, retries included (the
    audit counts its calls per cycle with it).
    """

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        connect_timeout: float = 1.0,
        read_timeout: float = 3.0,
        session: boto3.session.Session | None = None,
        max_pool_connections: int = 32,
        upstream: protocol.RegistryClient | None = None,
        on_request: protocol.RequestObserver | None = None,
    ) -> None:
        self._endpoint_url = endpoint_url
        self._on_request = on_request
        self._upstream = upstream
        self._rules: dict[tuple[str, str], tuple[float, tuple[PullThroughRule, ...]]] = {}
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_pool_connections = max_pool_connections
        self._session = session if session is not None else boto3.session.Session()
        self._clients: dict[_ClientKey, ECRClient] = {}
        self._lock = threading.Lock()

    def lookup(
        self,
        repository: outcomes.Repository,
        queries: Collection[outcomes.Query],
        *,
        timeout: float,
    ) -> Mapping[outcomes.Query, outcomes.Outcome]:
        """Every query's outcome, from one BatchGetImage per 100 queries."""
        started = time.monotonic()
        budget_end = started + timeout
        registry = _ecr_registry(repository)
        results: dict[outcomes.Query, outcomes.Outcome] = {}
        askable: list[outcomes.Query] = []
        for query in queries:
            if query.tag is None and query.digest is None:
                results[query] = outcomes.Missing(
                    "MissingDigestAndTag", f"{query}: the reference has neither tag nor digest"
                )
            else:
                askable.append(query)
        if not askable:
            return results
        if not _is_ecr_repository_name(repository.name):
            message = (
                f"repository name {repository.name!r} is not one ECR can hold"
                " (2-256 characters: lowercase letters and digits separated by"
                " '.', '_', '__', '-' or '/')"
            )
            return results | {
                q: outcomes.Missing(INVALID_REPOSITORY_NAME, message) for q in askable
            }

        client = self._client(registry)
        askable.sort(key=_query_sort_key)
        held: set[outcomes.Query] = set()
        try:
            try:
                answered = self._batch_get_images(
                    client, registry, repository, askable, budget_end, held
                )
            finally:
                metrics.REGISTRY_SECONDS.labels(BATCH_GET_IMAGE).observe(time.monotonic() - started)
        except errors.RegistryError as exc:
            rule = self._rule_after(exc, client, registry, repository, budget_end)
            if rule is None:
                raise
            failed = outcomes.Unknown(f"{repository}: {exc}")
            return results | self._through_upstream(
                rule, repository, dict.fromkeys(askable, failed), budget_end
            )
        # ECR imports an upstream image when BatchGetImage asks for it by tag (given the
        # import actions): what it returned is held and pinned. What it did not is asked
        # of the upstream, never pinned.
        pending = {
            q: o
            for q, o in answered.items()
            if isinstance(o, outcomes.Missing | outcomes.Unknown) and q not in held
        }
        if pending and self._upstream is not None:
            rule = self._pull_through_rule(client, registry, repository, budget_end)
            if rule is not None:
                answered |= self._through_upstream(rule, repository, pending, budget_end)
        return results | answered

    def _batch_get_images(
        self,
        client: "ECRClient",
        registry: references.EcrRegistry,
        repository: outcomes.Repository,
        askable: Sequence[outcomes.Query],
        budget_end: float,
        held: set[outcomes.Query],
    ) -> dict[outcomes.Query, outcomes.Outcome]:
        """Every query's outcome; `held` gets the queries whose image ECR holds but could
        not return (a failure code such as KmsError): no upstream is asked for those."""
        results: dict[outcomes.Query, outcomes.Outcome] = {}
        for start in range(0, len(askable), MAX_IMAGE_IDS):
            chunk = askable[start : start + MAX_IMAGE_IDS]
            try:
                results |= self._batch_get_image(
                    client, registry, repository, chunk, budget_end, held
                )
            except errors.RegistryError as exc:
                if start == 0:
                    raise
                # Earlier requests answered: keep their answers, the rest could not tell.
                unknown = outcomes.Unknown(f"{repository}: {exc}")
                return results | dict.fromkeys(askable[start:], unknown)
        return results

    def _rule_after(
        self,
        exc: errors.RegistryError,
        client: "ECRClient",
        registry: references.EcrRegistry,
        repository: outcomes.Repository,
        budget_end: float,
    ) -> PullThroughRule | None:
        """The pull-through cache rule of `repository` when BatchGetImage failed as a whole
        in a way a pull through the cache can (refused import, no repository yet, the
        upstream unreachable for ECR); None when there is none or no time to look.

        Only when ECR itself answered with the error: an ECR that cannot be reached (an
        outage) would only refuse the rules too, and the admission waits for neither."""
        if self._upstream is None or not isinstance(exc.__cause__, errors.ErrorResponse):
            return None
        return self._pull_through_rule(client, registry, repository, budget_end)

    def _pull_through_rule(
        self,
        client: "ECRClient",
        registry: references.EcrRegistry,
        repository: outcomes.Repository,
        budget_end: float,
    ) -> PullThroughRule | None:
        """The rule whose prefix is the longest one `repository` is under, if any."""
        key = (registry.account, registry.region)
        now = time.monotonic()
        cached = self._rules.get(key)
        if cached is not None and now < cached[0]:
            rules = cached[1]
        else:
            described = self._describe_rules(client, registry, budget_end)
            if described is None:
                return None
            rules = described
            with self._lock:
                self._rules[key] = (now + RULES_TTL, rules)
        matching = [rule for rule in rules if rule.covers(repository.name)]
        return max(matching, key=lambda rule: len(rule.prefix), default=None)

    def _describe_rules(
        self, client: "ECRClient", registry: references.EcrRegistry, budget_end: float
    ) -> tuple[PullThroughRule, ...] | None:
        """Every pull-through cache rule of the registry; none when ECR will not show them
        (kept as such), None when it could not answer now (asked again next time)."""
        context = {
            "operation": DESCRIBE_PULL_THROUGH_CACHE_RULES,
            "account": registry.account,
            "region": registry.region,
        }
        rules: list[PullThroughRule] = []
        token = ""
        started = time.monotonic()
        try:
            while True:
                response = self._attempt(
                    DESCRIBE_PULL_THROUGH_CACHE_RULES,
                    functools.partial(_describe_rules_page, client, registry.account, token),
                    budget_end=budget_end,
                    context=context,
                )
                rules.extend(_rule(dict(raw)) for raw in response.get("pullThroughCacheRules", []))
                token = str(response.get("nextToken") or "")
                if not token:
                    return tuple(rules)
        except errors.ErrorResponse as exc:
            logger.warning(
                "pull-through cache rules cannot be read: repositories under a rule are"
                " treated as plain repositories (grant ecr:DescribePullThroughCacheRules)",
                extra=context | {"code": exc.code, "problem": exc.message},
            )
            return ()
        except errors.RegistryError:
            return None
        finally:
            metrics.REGISTRY_SECONDS.labels(DESCRIBE_PULL_THROUGH_CACHE_RULES).observe(
                time.monotonic() - started
            )

    def _through_upstream(
        self,
        rule: PullThroughRule,
        repository: outcomes.Repository,
        pending: Mapping[outcomes.Query, outcomes.Outcome],
        budget_end: float,
    ) -> dict[outcomes.Query, outcomes.Outcome]:
        """What the upstream registry of `rule` says of the images ECR did not return."""
        upstream = rule.upstream(repository.name)
        asked = {q: outcomes.Query(upstream, tag=q.tag, digest=q.digest) for q in pending}
        answers: Mapping[outcomes.Query, outcomes.Outcome] = {}
        problem = ""
        time_left = budget_end - time.monotonic()
        if self._upstream is None or references.parse_ecr_host(upstream.registry) is not None:
            problem = "an ECR private upstream is not asked"
        elif time_left <= 0:
            problem = "no time was left to ask it"
        else:
            try:
                answers = self._upstream.lookup(upstream, list(asked.values()), timeout=time_left)
            except errors.RegistryError as exc:
                problem = str(exc)
        results: dict[outcomes.Query, outcomes.Outcome] = {}
        for query, ecr_said in pending.items():
            said = _said(ecr_said)
            where = f"{repository.name} is under the {rule}"
            cause = _likely_cause(said, rule)
            answer = answers.get(asked[query])
            if isinstance(answer, outcomes.Found):
                results[query] = outcomes.NotImported(
                    f"{where}; ECR does not hold {query} and this lookup could not import"
                    f" it ({said}): {cause}; the upstream {upstream} has it"
                )
            elif isinstance(answer, outcomes.Missing):
                results[query] = outcomes.Missing(
                    answer.code,
                    f"{query}: {where}, and neither ECR nor the upstream has it (ECR: {said};"
                    f" upstream: {answer.message})",
                )
            elif isinstance(answer, outcomes.Corrupt):
                results[query] = answer
            else:
                upstream_problem = answer.message if answer is not None else problem
                results[query] = outcomes.Unknown(
                    f"{query}: {where}; ECR did not return it ({said}): {cause}; asking the"
                    f" upstream {upstream} failed: {upstream_problem or 'no answer'}"
                )
        return results

    def lifecycle_preview(
        self,
        repository: outcomes.Repository,
        digests: Collection[references.Digest],
        *,
        timeout: float,
    ) -> dict[references.Digest, str]:
        """Which of `digests` the repository's lifecycle policy would act on now, with the
        action (`EXPIRE`, or `TRANSITION` to the archive): a preview is started and read
        (`ecr:StartLifecyclePolicyPreview`, `ecr:GetLifecyclePolicyPreview`), for these
        images only. A repository without a lifecycle policy acts on none.

        Raises `errors.RegistryError` when the preview cannot be read in time, or when
        another preview is in progress (its policy text may be a draft, not the policy).
        """
        budget_end = time.monotonic() + timeout
        registry = _ecr_registry(repository)
        client = self._client(registry)
        context = _context(START_LIFECYCLE_POLICY_PREVIEW, registry, repository)
        try:
            self._attempt(
                START_LIFECYCLE_POLICY_PREVIEW,
                lambda: client.start_lifecycle_policy_preview(
                    registryId=registry.account, repositoryName=repository.name
                ),
                budget_end=budget_end,
                context=context,
            )
        except errors.ErrorResponse as exc:
            if exc.code == "LifecyclePolicyNotFoundException":
                return {}
            if exc.code == "LifecyclePolicyPreviewInProgressException":
                raise errors.RegistryError(
                    f"a lifecycle policy preview of {repository} is already in progress"
                    " (perhaps of a draft policy): not read"
                ) from exc
            raise _registry_error(
                exc, START_LIFECYCLE_POLICY_PREVIEW, registry, repository
            ) from exc
        wanted = sorted(set(digests))
        acting: dict[references.Digest, str] = {}
        for start in range(0, len(wanted), MAX_IMAGE_IDS):
            chunk = wanted[start : start + MAX_IMAGE_IDS]
            acting |= self._read_preview(client, registry, repository, chunk, budget_end)
        return acting

    def _read_preview(
        self,
        client: "ECRClient",
        registry: references.EcrRegistry,
        repository: outcomes.Repository,
        digests: Sequence[references.Digest],
        budget_end: float,
    ) -> dict[references.Digest, str]:
        context = _context(GET_LIFECYCLE_POLICY_PREVIEW, registry, repository)
        image_ids: list[ImageIdentifierTypeDef] = [{"imageDigest": d} for d in digests]
        while True:
            try:
                response = self._attempt(
                    GET_LIFECYCLE_POLICY_PREVIEW,
                    lambda: client.get_lifecycle_policy_preview(
                        registryId=registry.account,
                        repositoryName=repository.name,
                        imageIds=image_ids,
                    ),
                    budget_end=budget_end,
                    context=context,
                )
            except errors.ErrorResponse as exc:
                raise _registry_error(
                    exc, GET_LIFECYCLE_POLICY_PREVIEW, registry, repository
                ) from exc
            status = str(response.get("status", ""))
            if status == "COMPLETE":
                break
            if status != "IN_PROGRESS":
                raise errors.RegistryError(
                    f"the lifecycle policy preview of {repository} ended {status or 'unknown'}"
                )
            if time.monotonic() + PREVIEW_POLL_SECONDS >= budget_end:
                raise errors.DeadlineExceeded(
                    f"the lifecycle policy preview of {repository} did not complete in time"
                )
            time.sleep(PREVIEW_POLL_SECONDS)
        acting: dict[references.Digest, str] = {}
        for result in response.get("previewResults", []):
            digest = result.get("imageDigest")
            action = (result.get("action") or {}).get("type")
            if isinstance(digest, str) and digest in digests and isinstance(action, str):
                acting[references.Digest(digest)] = action
        return acting

    def mutability(
        self, repository: outcomes.Repository, *, timeout: float
    ) -> outcomes.MutabilityOutcome:
        """The repository's tag mutability and exclusion filters, from DescribeRepositories."""
        started = time.monotonic()
        budget_end = started + timeout
        registry = _ecr_registry(repository)
        client = self._client(registry)
        context = _context(DESCRIBE_REPOSITORIES, registry, repository)
        try:
            response = self._attempt(
                DESCRIBE_REPOSITORIES,
                lambda: client.describe_repositories(
                    registryId=registry.account, repositoryNames=[repository.name]
                ),
                budget_end=budget_end,
                context=context,
            )
        except errors.ErrorResponse as exc:
            if exc.code == "RepositoryNotFoundException":
                return outcomes.Unknown(
                    f"repository {repository.name} does not exist in account"
                    f" {registry.account}, region {registry.region}"
                )
            raise _registry_error(exc, DESCRIBE_REPOSITORIES, registry, repository) from exc
        finally:
            metrics.REGISTRY_SECONDS.labels(DESCRIBE_REPOSITORIES).observe(
                time.monotonic() - started
            )
        for described in response.get("repositories", []):
            if described.get("repositoryName") == repository.name:
                return _tag_mutability(repository, dict(described))
        return outcomes.Unknown(
            f"DescribeRepositories did not describe {repository.name} in account"
            f" {registry.account}, region {registry.region}"
        )

    def _client(self, registry: references.EcrRegistry) -> "ECRClient":
        if self._endpoint_url is not None:
            key = _ClientKey(registry.region, fips=False, dualstack=False)
        else:
            key = _ClientKey(registry.region, fips=registry.fips, dualstack=registry.dualstack)
        client = self._clients.get(key)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                config = botocore.config.Config(
                    region_name=key.region,
                    connect_timeout=self._connect_timeout,
                    read_timeout=self._read_timeout,
                    # One attempt per request: retries are ours and know the budget.
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    use_fips_endpoint=key.fips,
                    use_dualstack_endpoint=key.dualstack,
                    max_pool_connections=self._max_pool_connections,
                    user_agent_extra="digestguard",
                )
                client = self._session.client("ecr", endpoint_url=self._endpoint_url, config=config)
                self._clients[key] = client
        return client

    def _batch_get_image(
        self,
        client: "ECRClient",
        registry: references.EcrRegistry,
        repository: outcomes.Repository,
        queries: Sequence[outcomes.Query],
        budget_end: float,
        held: set[outcomes.Query],
    ) -> dict[outcomes.Query, outcomes.Outcome]:
        image_ids: list[ImageIdentifierTypeDef] = [_image_id(q) for q in queries]
        context = _context(BATCH_GET_IMAGE, registry, repository) | {"images": len(queries)}
        try:
            response = self._attempt(
                BATCH_GET_IMAGE,
                lambda: client.batch_get_image(
                    registryId=registry.account,
                    repositoryName=repository.name,
                    imageIds=image_ids,
                    acceptedMediaTypes=list(protocol.ACCEPTED_MEDIA_TYPES),
                ),
                budget_end=budget_end,
                context=context,
            )
        except errors.ErrorResponse as exc:
            if exc.code == "RepositoryNotFoundException":
                missing = outcomes.Missing(
                    REPOSITORY_NOT_FOUND,
                    f"repository {repository.name} does not exist in account"
                    f" {registry.account}, region {registry.region}",
                )
                return dict.fromkeys(queries, missing)
            raise _registry_error(exc, BATCH_GET_IMAGE, registry, repository) from exc
        failures: list[dict[str, Any]] = [dict(failure) for failure in response.get("failures", [])]
        results = _outcomes(
            repository, queries, [dict(image) for image in response.get("images", [])], failures
        )
        codes = {
            q: {
                str(f.get("failureCode"))
                for f in failures
                if _failure_is_about(q, f.get("imageId", {}))
            }
            for q in queries
            if isinstance(results[q], outcomes.Unknown)
        }
        held.update(q for q, said in codes.items() if said & HELD_FAILURE_CODES)
        inaccessible = [q for q, said in codes.items() if IMAGE_INACCESSIBLE in said]
        if inaccessible:
            results |= self._archive_status(client, registry, repository, inaccessible, budget_end)
        return results

    def _archive_status(
        self,
        client: "ECRClient",
        registry: references.EcrRegistry,
        repository: outcomes.Repository,
        queries: Sequence[outcomes.Query],
        budget_end: float,
    ) -> dict[outcomes.Query, outcomes.Outcome]:
        """Archived for the queries whose image DescribeImages reports archived or being
        restored; the others keep BatchGetImage's "could not tell"."""
        image_ids: list[ImageIdentifierTypeDef] = [_image_id(q) for q in queries]
        context = _context(DESCRIBE_IMAGES, registry, repository) | {"images": len(queries)}
        started = time.monotonic()
        try:
            response = self._attempt(
                DESCRIBE_IMAGES,
                lambda: client.describe_images(
                    registryId=registry.account,
                    repositoryName=repository.name,
                    imageIds=image_ids,
                    # Without a filter only ACTIVE images are described.
                    filter={"imageStatus": "ANY"},
                ),
                budget_end=budget_end,
                context=context,
            )
        except errors.RegistryError as exc:
            if isinstance(exc, errors.ErrorResponse):
                exc = _registry_error(exc, DESCRIBE_IMAGES, registry, repository)
            return {
                q: outcomes.Unknown(
                    f"{q}: ECR failure {IMAGE_INACCESSIBLE}, and whether it is archived"
                    f" could not be read: {exc}"
                )
                for q in queries
            }
        finally:
            metrics.REGISTRY_SECONDS.labels(DESCRIBE_IMAGES).observe(time.monotonic() - started)
        results: dict[outcomes.Query, outcomes.Outcome] = {}
        for detail in response.get("imageDetails", []):
            status = str(detail.get("imageStatus", ""))
            if status not in {ARCHIVED, ACTIVATING}:
                continue
            for query in queries:
                if query not in results and _describes(query, detail):
                    results[query] = outcomes.Archived(
                        status, _archived_message(registry, repository, query, detail)
                    )
        return results

    def _attempt(
        self,
        operation: str,
        call: Callable[[], _T],
        *,
        budget_end: float,
        context: dict[str, Any],
    ) -> _T:
        """`call()`, under the registry clients' one retry loop.

        Raises `errors.ErrorResponse` for a non-retryable error response and
        `errors.RegistryError` when the budget is spent.
        """

        def attempt() -> _T:
            if self._on_request is not None:
                self._on_request(operation)
            try:
                result = call()
            except botocore.exceptions.ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code", "Unknown"))
                message = str(error.get("Message", exc))
                if code not in _RETRYABLE_CODES:
                    metrics.REGISTRY_CALLS.labels(operation, "error").inc()
                    raise errors.ErrorResponse(code, message) from exc
                outcome = "throttled" if code in _THROTTLING_CODES else "error"
                metrics.REGISTRY_CALLS.labels(operation, outcome).inc()
                raise errors.Retryable(f"{code}: {message}") from exc
            except _CREDENTIAL_ERRORS as exc:
                metrics.REGISTRY_CALLS.labels(operation, "error").inc()
                raise errors.RegistryError(
                    f"no AWS credentials for ECR {operation} ({exc}); the webhook's service"
                    " account needs an IAM role (IRSA or EKS Pod Identity)"
                ) from exc
            except _TRANSPORT_ERRORS as exc:
                metrics.REGISTRY_CALLS.labels(operation, "error").inc()
                raise errors.Retryable(
                    f"{type(exc).__name__}: {exc}", refused=errors.connection_refused(exc)
                ) from exc
            except botocore.exceptions.BotoCoreError as exc:
                metrics.REGISTRY_CALLS.labels(operation, "error").inc()
                raise errors.RegistryError(f"ECR {operation} failed: {exc}") from exc
            metrics.REGISTRY_CALLS.labels(operation, "ok").inc()
            return result

        return retries.call(
            attempt, what=f"ECR {operation}", budget_end=budget_end, logger=logger, context=context
        )


def _ecr_registry(repository: outcomes.Repository) -> references.EcrRegistry:
    registry = references.parse_ecr_host(repository.registry)
    if registry is None:
        raise errors.RegistryError(f"{repository.registry} is not an ECR private registry host")
    return registry


def _is_ecr_repository_name(name: str) -> bool:
    return len(name) in _ECR_REPOSITORY_NAME_LENGTH and bool(_ECR_REPOSITORY_NAME.fullmatch(name))


def _query_sort_key(query: outcomes.Query) -> tuple[str, str]:
    return (query.tag or "", query.digest or "")


def _image_id(query: outcomes.Query) -> "ImageIdentifierTypeDef":
    image_id: ImageIdentifierTypeDef = {}
    if query.tag is not None:
        image_id["imageTag"] = query.tag
    if query.digest is not None:
        image_id["imageDigest"] = query.digest
    return image_id


def _context(
    operation: str, registry: references.EcrRegistry, repository: outcomes.Repository
) -> dict[str, Any]:
    return {
        "operation": operation,
        "account": registry.account,
        "region": registry.region,
        "repository": repository.name,
    }


def _registry_error(
    exc: errors.ErrorResponse,
    operation: str,
    registry: references.EcrRegistry,
    repository: outcomes.Repository,
) -> errors.RegistryError:
    where = f"repository {repository.name} (account {registry.account}, region {registry.region})"
    if exc.code in {"AccessDeniedException", "AccessDenied"}:
        arn = (
            f"arn:{registry.partition}:ecr:{registry.region}:{registry.account}"
            f":repository/{repository.name}"
        )
        message = (
            f"ECR denied {operation} on {where}: grant the webhook's IAM role"
            f" ecr:{operation} on {arn} ({exc.message})"
        )
    elif exc.code == "InvalidParameterException":
        message = f"ECR refused the {operation} request for {where} as invalid: {exc.message}"
    else:
        message = f"ECR {operation} failed for {where}: {exc.code}: {exc.message}"
    logger.warning(
        "ECR call failed",
        extra=_context(operation, registry, repository) | {"code": exc.code, "problem": message},
    )
    return errors.RegistryError(message)


def _outcomes(
    repository: outcomes.Repository,
    queries: Sequence[outcomes.Query],
    images: Sequence[Mapping[str, Any]],
    failures: Sequence[Mapping[str, Any]],
) -> dict[outcomes.Query, outcomes.Outcome]:
    """Map one BatchGetImage answer to the queries it was asked."""
    results: dict[outcomes.Query, outcomes.Outcome] = {}
    for image in images:
        image_id = image.get("imageId", {})
        answered = [q for q in queries if q not in results and _image_answers(q, image_id)]
        if answered:
            outcome = _verified(repository, image)
            results.update(dict.fromkeys(answered, outcome))
    for failure in failures:
        image_id = failure.get("imageId", {})
        code = str(failure.get("failureCode", "Unknown"))
        reason = str(failure.get("failureReason", "")) or code
        for query in queries:
            if query in results or not _failure_is_about(query, image_id):
                continue
            if code in MISSING_FAILURE_CODES:
                results[query] = outcomes.Missing(code, f"{query}: {reason}")
            else:
                results[query] = outcomes.Unknown(f"{query}: ECR failure {code}: {reason}")
    for query in queries:
        if query not in results:
            results[query] = outcomes.Unknown(f"{query}: ECR's answer did not mention it")
    return results


def _describes(query: outcomes.Query, detail: Mapping[str, Any]) -> bool:
    """Whether a DescribeImages `imageDetail` is the image `query` names."""
    if query.digest is not None and detail.get("imageDigest") != query.digest:
        return False
    return query.tag is None or query.tag in (detail.get("imageTags") or [])


def _archived_message(
    registry: references.EcrRegistry,
    repository: outcomes.Repository,
    query: outcomes.Query,
    detail: Mapping[str, Any],
) -> str:
    digest = str(detail.get("imageDigest") or query.digest or "")
    image_id = f"imageDigest={digest}" if digest else f"imageTag={query.tag}"
    if detail.get("imageStatus") == ACTIVATING:
        return (
            f"{query} is being restored from the ECR archive and cannot be pulled until the"
            " restore completes (ECR says within 20 minutes)"
        )
    return (
        f"{query} is archived in ECR (storage class ARCHIVE) and cannot be pulled until it is"
        f" restored: {UPDATE_IMAGE_STORAGE_CLASS_CLI} --registry-id {registry.account}"
        f" --region {registry.region} --repository-name {repository.name}"
        f" --image-id {image_id} --target-storage-class STANDARD"
    )


def _image_answers(query: outcomes.Query, image_id: Mapping[str, Any]) -> bool:
    if query.digest is not None and image_id.get("imageDigest") != query.digest:
        return False
    return query.tag is None or image_id.get("imageTag") == query.tag


def _describe_rules_page(client: "ECRClient", account: str, token: str) -> Mapping[str, Any]:
    if token:
        return client.describe_pull_through_cache_rules(registryId=account, nextToken=token)
    return client.describe_pull_through_cache_rules(registryId=account)


def _rule(raw: Mapping[str, Any]) -> PullThroughRule:
    prefix = str(raw.get("ecrRepositoryPrefix", "")).rstrip("/")
    upstream_prefix = str(raw.get("upstreamRepositoryPrefix") or "").rstrip("/")
    return PullThroughRule(
        prefix="" if prefix == "ROOT" else prefix,
        upstream_url=str(raw.get("upstreamRegistryUrl", "")),
        upstream_prefix="" if upstream_prefix == "ROOT" else upstream_prefix,
        credential_arn=str(raw.get("credentialArn") or ""),
    )


def _said(outcome: outcomes.Outcome) -> str:
    if isinstance(outcome, outcomes.Missing):
        return f"{outcome.code}: {outcome.message}"
    if isinstance(outcome, outcomes.Unknown | outcomes.Corrupt):
        return outcome.message
    return str(outcome)


_UPSTREAM_CREDENTIAL_CODES: Final = (
    "UnableToGetUpstreamImageException",
    "UpstreamAccessDenied",
    "UpstreamTooManyRequests",
)


def _likely_cause(said: str, rule: PullThroughRule) -> str:
    """The likely reason ECR did not return an image under `rule`, from what it said."""
    secret = f"the secret {rule.credential_arn}" if rule.credential_arn else "the rule's secret"
    if any(code in said for code in _UPSTREAM_CREDENTIAL_CODES):
        return (
            "ECR could not pull it from the upstream; that is usually the upstream"
            f" credential in Secrets Manager ({secret}): wrong, expired, or rate-limited"
        )
    if "UpstreamUnavailable" in said:
        return "the upstream registry was unavailable to ECR"
    if "AccessDenied" in said:
        return (
            "the webhook's IAM role may not import upstream images (grant"
            " ecr:BatchImportUpstreamImage, and ecr:CreateRepository for a repository not"
            " created yet, to pin on first use)"
        )
    if "RepositoryNotFound" in said:
        return (
            "the first pull through the cache creates the repository (grant"
            " ecr:CreateRepository and ecr:BatchImportUpstreamImage to pin on first use)"
        )
    return (
        "ECR has not imported it (with ecr:BatchImportUpstreamImage this lookup imports"
        " it and pins it)"
    )


def _failure_is_about(query: outcomes.Query, image_id: Mapping[str, Any]) -> bool:
    return image_id.get("imageTag") == query.tag and image_id.get("imageDigest") == query.digest


def _verified(
    repository: outcomes.Repository, image: Mapping[str, Any]
) -> outcomes.Found | outcomes.Corrupt:
    """The image's digest, once its manifest is proven to hash to it."""
    digest = str(image.get("imageId", {}).get("imageDigest", ""))
    manifest = image.get("imageManifest")
    if not isinstance(manifest, str):
        return outcomes.Corrupt(f"ECR returned {repository}@{digest} without its manifest")
    media_type = image.get("imageManifestMediaType") or protocol.declared_media_type(manifest)
    return manifests.verified(
        manifest.encode("utf-8"),
        digest,
        str(media_type),
        source=f"the manifest ECR returned for {repository}@{digest}",
    )


def _tag_mutability(
    repository: outcomes.Repository, described: Mapping[str, Any]
) -> outcomes.MutabilityOutcome:
    raw_mode = described.get("imageTagMutability", outcomes.Mutability.MUTABLE.value)
    try:
        mode = outcomes.Mutability(raw_mode)
    except ValueError:
        return outcomes.Unknown(f"{repository} has tag mutability {raw_mode!r}, unknown here")
    # Older ECR answers (and older botocore models) have no exclusion filters at all.
    exclusions: list[str] = []
    for entry in described.get("imageTagMutabilityExclusionFilters") or []:
        filter_type = entry.get("filterType", "WILDCARD")
        if filter_type != "WILDCARD" or not isinstance(entry.get("filter"), str):
            # An exclusion that cannot be evaluated could make any tag mutable.
            return outcomes.Unknown(
                f"{repository} has a tag mutability exclusion filter of type"
                f" {filter_type!r}, unknown here"
            )
        exclusions.append(entry["filter"])
    return outcomes.TagMutability(mode, tuple(exclusions))
