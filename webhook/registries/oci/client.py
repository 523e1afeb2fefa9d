"""The OCI distribution client: digests from any registry that speaks the distribution API.

`OciClient` implements `protocol.RegistryClient` for every registry that is not an
Amazon ECR private registry (Docker Hub, ECR Public, GHCR, Quay, Harbor, a CNCF
distribution of your own…), over `transport` (urllib3). The API has no batch
call: each image is asked on its own, with the same `Accept` list as ECR's
`acceptedMediaTypes`, in a way that spares rate-limited registries (Docker Hub counts
a manifest GET as a pull, a HEAD not):

- a tag is asked with `HEAD /v2/<name>/manifests/<tag>`; when the digest it reports
  (`Docker-Content-Digest`) was verified before, that is the answer, without a pull;
  otherwise the manifest is fetched by that digest and its bytes verified;
- a digest verified before is asked with a HEAD (does it still exist?); one not
  verified before is fetched at once;
- a verified (registry, repository, digest) is remembered (at most
  `MAX_VERIFIED_DIGESTS`): its bytes cannot change, only its existence can;
- any HEAD answer other than 200 with a digest (an error, a registry without HEAD,
  a digest other than the one asked) is asked again as a GET, whose answer is the
  one the table below reads.

The Bearer token flow (`WWW-Authenticate: Bearer realm=…,service=…,scope=…`) is followed
(`auth`), anonymously unless the client has credentials for the registry (the command
line's from the user's Docker config; the webhook's from its pull Secrets, replaced as
they change with `use_credentials`), and each token is kept per (realm, service, scope)
until its `expires_in`.

What each answer becomes (`Missing` denies under Mutate/Enforce, `Unknown` goes to
the policy's `onResolveError`):

    the registry says                       outcome   why
    ──────────────────────────────────────  ────────  ─────────────────────────────────
    200, body hashes to Docker-Content-     Found     the digest a runtime pulls by; for a
      Digest (digest query: to the digest)            digest query, the one asked for
    200 without Docker-Content-Digest       Found     the body's sha256, as a runtime computes it
    200, body hashes to something else,     Corrupt   integrity failure, never accepted
      or Docker-Content-Digest is not the
      digest asked for, or cannot be checked
    200, not a manifest type we asked for   Unknown   schema 1, an HTML page from a proxy…
    200, body above 4 MiB                   Unknown   no registry serves such a manifest
    404 NAME_UNKNOWN                        Missing   for every image asked: no such repository
    404 MANIFEST_UNKNOWN, any other 404     Missing   the registry is the authority on its images
    400 NAME_INVALID, TAG_INVALID,          Missing   no image can have that name, tag or digest
      DIGEST_INVALID, MANIFEST_INVALID
    401 after the anonymous token flow,     Unknown   for every image asked: the repository needs
      401 without a Bearer challenge,                   credentials (Docker Hub also answers so
      the token endpoint refuses                        for a repository that does not exist)
    403 (DENIED)                            Unknown   for every image asked
    any other answer                        Unknown   never deny on an answer we do not know
    3xx                                     followed  at most 5 redirects; Authorization stays with
                                                        the registry's host; never HTTPS → HTTP
    429, 5xx, connection errors and         retried   full-jitter backoff, at least Retry-After,
      timeouts (manifest, HEAD or token)                while the call's time budget allows
                                                        another attempt, then error
    TLS verification failure                error     a configuration problem: not retried

"error" means `errors.RegistryError` is raised, as `ecr.EcrClient` does: the resolver
turns it into `Unknown` for every image of the call. When earlier images of the call
were answered, their answers are kept and the rest are `Unknown`.

HTTPS with the system CAs (plus `ca_file`) is the default; plain HTTP is used only for
the registries listed in `insecure_registries`. `docker.io` is served at
`registry-1.docker.io`. Idle keep-alive connections are reused, at most
`max_idle_connections` per origin.
"""

import collections
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Final

from webhook import errors, metrics
from webhook.core import outcomes, references
from webhook.registries import manifests, protocol, retries
from webhook.registries.oci import auth, dockerconfig, transport

logger = logging.getLogger("digestguard.oci")

GET_MANIFEST: Final = "GetManifest"
"""Operation label of the registry metrics (the token endpoint's is `auth.GET_TOKEN`)."""
HEAD_MANIFEST: Final = "HeadManifest"
"""Operation label of a manifest HEAD: what a tag points to, without the manifest."""

MAX_VERIFIED_DIGESTS: Final = 100_000
"""Verified (registry, repository, digest)s remembered, least recently used forgotten."""
HEAD_UNSUPPORTED: Final = frozenset({405, 501})
"""A HEAD answered so is asked again as a GET."""

DOCKER_HUB_API_HOST: Final = "registry-1.docker.io"
"""Where the distribution API of `docker.io` is served."""

MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
"""The largest manifest distribution accepts on push, and so the largest we read."""

NAME_UNKNOWN: Final = "NAME_UNKNOWN"
MANIFEST_UNKNOWN: Final = "MANIFEST_UNKNOWN"
MISSING_INVALID_CODES: Final = frozenset(
    {"NAME_INVALID", "TAG_INVALID", "DIGEST_INVALID", "MANIFEST_INVALID"}
)
"""Error codes of a 400 answer that say no image can have that name, tag or digest."""


def api_host(registry: str) -> str:
    """The host[:port] that serves `registry`'s distribution API."""
    return DOCKER_HUB_API_HOST if registry == references.DOCKER_HUB else registry


class OciClient:
    """Blocking distribution API calls with budget-bounded retries; one instance serves
    every registry and every thread.

    `insecure_registries` are `host[:port]` names (as written in image references)
    reached over plain HTTP; every other registry is reached over HTTPS, verified with
    the system CAs and those of `ca_file`. `clock` times token expiry (tests pass one).
    """

    def __init__(
        self,
        *,
        insecure_registries: Iterable[str] = (),
        ca_file: str | None = None,
        connect_timeout: float = 1.0,
        read_timeout: float = 3.0,
        max_idle_connections: int = 32,
        clock: Callable[[], float] = time.monotonic,
        credentials: dockerconfig.Credentials | None = None,
        on_request: protocol.RequestObserver | None = None,
    ) -> None:
        self._on_request = on_request
        self._insecure = frozenset(_insecure_entry(entry) for entry in insecure_registries)
        self._transport = transport.Transport(
            ca_file=ca_file,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_idle_connections=max_idle_connections,
        )
        self._tokens = auth.Tokens(
            self._transport, may_go_to=self._may_use, clock=clock, credentials=credentials
        )
        self._verified: collections.OrderedDict[tuple[str, str, str], str] = (
            collections.OrderedDict()
        )
        self._verified_lock = threading.Lock()

    def use_credentials(self, credentials: dockerconfig.Credentials) -> frozenset[str]:
        """Send `credentials` from now on instead of those given before (thread-safe);
        returns the registries whose credential changed."""
        return self._tokens.replace_credentials(credentials)

    def use_scoped(self, scope: str, registry: str, credential: dockerconfig.Credential) -> None:
        """Send `credential` to `registry` for the queries of credential `scope` (a pod
        namespace's pull Secret: `outcomes.Query.scope`); thread-safe."""
        self._tokens.put_scoped(scope, registry, credential)

    def close(self) -> None:
        """Close the idle connections; the client stays usable."""
        self._transport.close()

    def lookup(
        self,
        repository: outcomes.Repository,
        queries: Collection[outcomes.Query],
        *,
        timeout: float,
    ) -> Mapping[outcomes.Query, outcomes.Outcome]:
        """Every query's outcome, one manifest GET each, within `timeout` seconds in all."""
        started = time.monotonic()
        budget_end = started + timeout
        results: dict[outcomes.Query, outcomes.Outcome] = {}
        pending = sorted(queries, key=lambda q: (q.digest or "", q.tag or ""))
        try:
            for index, query in enumerate(pending):
                try:
                    outcome, for_the_repository = self._lookup_one(repository, query, budget_end)
                except errors.RegistryError as exc:
                    if index == 0:
                        raise
                    # Earlier images were answered: keep those answers, the rest could not tell.
                    unknown = outcomes.Unknown(f"{repository}: {exc}")
                    return results | dict.fromkeys(pending[index:], unknown)
                results[query] = outcome
                if for_the_repository:
                    # The answer is about the repository: asking for its other images
                    # would get the same one.
                    return results | dict.fromkeys(pending[index + 1 :], outcome)
        finally:
            metrics.REGISTRY_SECONDS.labels(GET_MANIFEST).observe(time.monotonic() - started)
        return results

    def mutability(
        self, repository: outcomes.Repository, *, timeout: float
    ) -> outcomes.MutabilityOutcome:
        return outcomes.Unknown(
            "tag mutability is an Amazon ECR setting;"
            f" {repository.registry} is a generic OCI registry"
        )

    def _lookup_one(
        self, repository: outcomes.Repository, query: outcomes.Query, budget_end: float
    ) -> tuple[outcomes.Outcome, bool]:
        """The query's outcome, and whether that outcome holds for the whole repository."""
        reference = query.digest or query.tag
        if not reference:
            return outcomes.Missing("TAG_INVALID", f"{query}: neither tag nor digest"), False
        context = {
            "operation": GET_MANIFEST,
            "registry": repository.registry,
            "repository": repository.name,
            "reference": reference,
        }

        try:
            headed = self._headed(repository, query, reference, budget_end, context)
        except errors.Refused as exc:
            return outcomes.Unknown(f"{repository}: {exc.message}"), True
        if headed is not None:
            return headed, False
        return self._got(repository, query, reference, budget_end, context)

    def _headed(
        self,
        repository: outcomes.Repository,
        query: outcomes.Query,
        reference: str,
        budget_end: float,
        context: Mapping[str, str],
    ) -> outcomes.Outcome | None:
        """The outcome a HEAD tells, or None when a GET has to tell it.

        A HEAD is not counted as a pull by Docker Hub's rate limits. It answers with the
        digest a tag points to (`Docker-Content-Digest`); a digest whose manifest was
        verified before is the answer, since its bytes cannot change. Any other answer
        (a digest not yet verified, an error, a registry without HEAD) is left to a GET,
        which verifies the bytes, or says precisely what is wrong.
        """
        if query.digest is not None and self._verified_type(repository, query.digest) is None:
            return None
        try:
            response = self._call(
                HEAD_MANIFEST, repository, reference, budget_end, context, scope=query.scope
            )
        except errors.Refused:
            return None
        if response.status != 200:
            return None
        reported = response.headers.get("Docker-Content-Digest", "").strip()
        if not reported or (query.digest is not None and reported != query.digest):
            return None
        media_type = self._verified_type(repository, reported)
        if media_type is not None:
            return outcomes.Found(references.Digest(reported), media_type)
        # The tag's digest, not verified yet: fetch the manifest by that digest, so that
        # what is verified (and remembered) is exactly what a runtime will pull.
        by_digest = outcomes.Query(
            repository, digest=references.Digest(reported), scope=query.scope
        )
        outcome, _ = self._got(repository, by_digest, reported, budget_end, context)
        return outcome if isinstance(outcome, outcomes.Found) else None

    def _verified_type(self, repository: outcomes.Repository, digest: str) -> str | None:
        """The media type of a manifest verified before to have `digest`, or None."""
        key = (repository.registry, repository.name, digest)
        with self._verified_lock:
            media_type = self._verified.get(key)
            if media_type is not None:
                self._verified.move_to_end(key)
        return media_type

    def _got(
        self,
        repository: outcomes.Repository,
        query: outcomes.Query,
        reference: str,
        budget_end: float,
        context: Mapping[str, str],
    ) -> tuple[outcomes.Outcome, bool]:
        """The outcome of a GET of the manifest; a verified one is remembered."""
        try:
            response = self._call(
                GET_MANIFEST, repository, reference, budget_end, context, scope=query.scope
            )
        except errors.Refused as exc:
            return outcomes.Unknown(f"{repository}: {exc.message}"), True
        outcome, for_the_repository = _outcome(
            repository,
            query,
            response,
            self._tokens.credentials_from(repository.registry, query.scope),
        )
        if isinstance(outcome, outcomes.Found):
            with self._verified_lock:
                key = (repository.registry, repository.name, outcome.digest)
                self._verified[key] = outcome.media_type
                self._verified.move_to_end(key)
                while len(self._verified) > MAX_VERIFIED_DIGESTS:
                    self._verified.popitem(last=False)
        return outcome, for_the_repository

    def _call(
        self,
        operation: str,
        repository: outcomes.Repository,
        reference: str,
        budget_end: float,
        context: Mapping[str, str],
        *,
        scope: str = "",
    ) -> transport.Response:
        """One manifest request (`operation` GET_MANIFEST or HEAD_MANIFEST) with the
        credentials of `scope`, retried within the budget; counted in the metrics under
        `operation`."""
        method = "HEAD" if operation == HEAD_MANIFEST else "GET"

        def attempt() -> transport.Response:
            if self._on_request is not None:
                self._on_request(GET_MANIFEST)
            try:
                response = self._get_manifest(
                    repository, reference, budget_end, method=method, scope=scope
                )
            except errors.Retryable as exc:
                metrics.REGISTRY_CALLS.labels(
                    operation, "throttled" if exc.throttled else "error"
                ).inc()
                raise
            except (errors.Refused, errors.RegistryError):
                metrics.REGISTRY_CALLS.labels(operation, "error").inc()
                raise
            answered = response.status in (200, 404) or (
                response.status == 400 and response.error()[0] in MISSING_INVALID_CODES
            )
            metrics.REGISTRY_CALLS.labels(operation, "ok" if answered else "error").inc()
            return response

        return retries.call(
            attempt, what=operation, budget_end=budget_end, logger=logger, context=context
        )

    def _get_manifest(
        self,
        repository: outcomes.Repository,
        reference: str,
        budget_end: float,
        *,
        method: str = "GET",
        scope: str = "",
    ) -> transport.Response:
        """One GET (or HEAD) of a manifest, through the anonymous token flow and redirects.

        Raises `errors.Retryable` for 429/5xx/transport failures and
        `errors.Refused` when access is refused; any other answer is returned, and so
        is a HEAD that the registry does not implement (405, 501).
        """
        scheme = "http" if repository.registry in self._insecure else "https"
        url = (
            f"{scheme}://{api_host(repository.registry)}"
            f"/v2/{urllib.parse.quote(repository.name, safe='/')}"
            f"/manifests/{urllib.parse.quote(reference, safe=':')}"
        )
        authorization = self._tokens.cached_authorization(repository, scope)
        fresh_token = False
        while True:
            response = self._transport.get(
                url,
                headers={"Accept": ", ".join(protocol.ACCEPTED_MEDIA_TYPES)},
                authorization=authorization,
                budget_end=budget_end,
                max_bytes=MAX_MANIFEST_BYTES,
                may_go_to=lambda origin: self._may_use(origin, repository.registry),
                method=method,
            )
            if method == "HEAD" and response.status in HEAD_UNSUPPORTED:
                return response
            if response.status == 401:
                if fresh_token:
                    raise errors.Refused(
                        auth.unauthorized(
                            repository,
                            response,
                            after_token=True,
                            credentials_from=self._tokens.credentials_from(
                                repository.registry, scope
                            ),
                        )
                    )
                authorization = self._tokens.authorization(repository, response, budget_end, scope)
                fresh_token = True
                continue
            if response.status == 429 or response.status >= 500:
                raise errors.Retryable(
                    f"{response.url}: HTTP {response.status} {' '.join(response.error())}".rstrip(),
                    retry_after=response.retry_after(),
                    throttled=response.status == 429,
                )
            return response

    def _may_use(self, origin: transport.Origin, registry: str) -> bool:
        """Whether `registry` may send us to `origin`: plain HTTP only where it is allowed."""
        return origin.scheme == "https" or bool({origin.netloc, registry} & self._insecure)


def _insecure_entry(entry: str) -> str:
    host = entry.strip().lower()
    if not host or "/" in host or "@" in host:
        raise errors.ConfigurationError(
            f"insecure registry {entry!r} is not a host[:port] (no scheme, no path)"
        )
    return host


def _outcome(
    repository: outcomes.Repository,
    query: outcomes.Query,
    response: transport.Response,
    credentials_from: str | None = None,
) -> tuple[outcomes.Outcome, bool]:
    """What a final answer says about the query, and whether it holds for the whole repository
    (`credentials_from`: where the credentials sent came from, None for none)."""
    status = response.status
    code, message = response.error()
    said = f"HTTP {status}" + (f" {code}: {message}" if code else "")
    if status == 200:
        return _verified(repository, query, response), False
    if status == 404 and code == NAME_UNKNOWN:
        return outcomes.Missing(
            NAME_UNKNOWN,
            f"repository {repository.name} does not exist in registry"
            f" {repository.registry} ({said})",
        ), True
    if status == 404:
        return outcomes.Missing(code or MANIFEST_UNKNOWN, f"{query}: {said}"), False
    if status == 400 and code in MISSING_INVALID_CODES:
        return outcomes.Missing(code, f"{query}: {said}"), False
    if status == 403:
        who = (
            "anonymous access"
            if credentials_from is None
            else f"access with the credentials of {credentials_from}"
        )
        return outcomes.Unknown(f"{repository}: {repository.registry} denied {who} ({said})"), True
    return outcomes.Unknown(f"{query}: {repository.registry} answered {said}"), False


def _verified(
    repository: outcomes.Repository, query: outcomes.Query, response: transport.Response
) -> outcomes.Outcome:
    """The manifest's digest, once its bytes are proven to hash to it."""
    registry = repository.registry
    if response.too_large:
        return outcomes.Unknown(
            f"{query}: {registry} sent a manifest larger than {MAX_MANIFEST_BYTES} bytes"
        )
    media_type = response.content_type()
    if media_type not in protocol.ACCEPTED_MEDIA_TYPES:
        declared = protocol.declared_media_type(response.body)
        if declared not in protocol.ACCEPTED_MEDIA_TYPES:
            return outcomes.Unknown(
                f"{query}: {registry} answered with {media_type!r}"
                f"{f' declaring {declared!r}' if declared else ''}, not one of the"
                f" manifest types asked for ({', '.join(protocol.ACCEPTED_MEDIA_TYPES)})"
            )
        media_type = declared
    reported = response.headers.get("Docker-Content-Digest", "").strip() or None
    if query.digest is not None and reported is not None and reported != query.digest:
        return outcomes.Corrupt(
            f"asked {registry} for {query} and it answered with a manifest it says is"
            f" {reported}: integrity check failed"
        )
    # With no digest to check against, the content is its own digest, as a runtime sees it.
    claimed = query.digest or reported or manifests.sha256_digest(response.body)
    return manifests.verified(
        response.body, claimed, media_type, source=f"the manifest {registry} returned for {query}"
    )
