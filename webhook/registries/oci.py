"""The OCI distribution client: digests from any registry that speaks the distribution API.

`OciClient` implements `protocol.RegistryClient` for every registry that is not an
Amazon ECR private registry (Docker Hub, ECR Public, GHCR, Quay, Harbor, a CNCF
distribution of your own…), with the standard library only. The API has no batch
call: each image is one `GET /v2/<name>/manifests/<tag or digest>`, sent with the
same `Accept` list as ECR's `acceptedMediaTypes`. Pulls are anonymous: the Bearer
token flow (`WWW-Authenticate: Bearer realm=…,service=…,scope=…`) is followed without
credentials, and each token is kept per (registry, scope) until its `expires_in`.

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
      timeouts (manifest or token)                      while the call's time budget allows
                                                        another attempt, then error
    TLS verification failure                error     a configuration problem: not retried

"error" means `errors.RegistryError` is raised, as `ecr.EcrClient` does: the resolver
turns it into `Unknown` for every image of the call. When earlier images of the call
were answered, their answers are kept and the rest are `Unknown`.

HTTPS with the system CAs (plus `ca_file`) is the default; plain HTTP is used only for
the registries listed in `insecure_registries`. `docker.io` is served at
`registry-1.docker.io`. Idle keep-alive connections are reused, at most
`max_idle_connections` in all.
"""

import collections
import dataclasses
import hashlib
import http.client
import json
import logging
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Final

from webhook import __version__, errors, metrics
from webhook.core import outcomes, references
from webhook.registries import protocol, retries

logger = logging.getLogger("digestguard.oci")

GET_MANIFEST: Final = "GetManifest"
GET_TOKEN: Final = "GetToken"
"""Operation labels of the registry metrics."""

DOCKER_HUB_API_HOST: Final = "registry-1.docker.io"
"""Where the distribution API of `docker.io` is served."""

MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
"""The largest manifest distribution accepts on push, and so the largest we read."""
MAX_REDIRECTS: Final = 5

NAME_UNKNOWN: Final = "NAME_UNKNOWN"
MANIFEST_UNKNOWN: Final = "MANIFEST_UNKNOWN"
MISSING_INVALID_CODES: Final = frozenset(
    {"NAME_INVALID", "TAG_INVALID", "DIGEST_INVALID", "MANIFEST_INVALID"}
)
"""Error codes of a 400 answer that say no image can have that name, tag or digest."""

_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_HASHES: Final = frozenset({"sha256", "sha384", "sha512"})
_DEFAULT_TOKEN_SECONDS: Final = 60.0
"""A token without `expires_in` lives this long (the distribution token spec's default)."""
_TOKEN_EXPIRY_MARGIN_SECONDS: Final = 5.0
"""A cached token is not used this close to its expiry: it could expire on the way."""
_MAX_TOKENS: Final = 10_000
_MAX_TOKEN_RESPONSE_BYTES: Final = 1024 * 1024
_IDLE_CONNECTION_SECONDS: Final = 30.0
"""An idle connection older than this is closed, not reused: the server may have dropped it."""

# RFC 9110 `token`, `quoted-string` and `token68`, for WWW-Authenticate.
_TOKEN: Final = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED: Final = r'"(?:[^"\\]|\\.)*"'
_AUTH_PARAM: Final = re.compile(rf"({_TOKEN})[ \t]*=[ \t]*({_TOKEN}|{_QUOTED})")
_AUTH_SCHEME: Final = re.compile(_TOKEN)
_TOKEN68: Final = re.compile(r"[A-Za-z0-9._~+/-]+=*(?=[ \t]*(?:,|$))")
_SEPARATORS: Final = " \t,"
_QUOTED_PAIR: Final = re.compile(r"\\(.)")


@dataclasses.dataclass(frozen=True)
class Challenge:
    """One challenge of a `WWW-Authenticate` header: its scheme (lowercase) and parameters."""

    scheme: str
    params: Mapping[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")


def parse_challenges(header: str) -> tuple[Challenge, ...]:
    """The challenges of a `WWW-Authenticate` value (RFC 9110 §11.6.1), in order.

    Parameter names are lowercased; quoted values are unquoted. Parsing stops at the
    first thing that is neither a scheme, a parameter nor a token68.
    """
    challenges: list[Challenge] = []
    scheme: str | None = None
    params: dict[str, str] = {}
    after_scheme = False
    position = 0
    while True:
        while position < len(header) and header[position] in _SEPARATORS:
            position += 1
        if position >= len(header):
            break
        param = _AUTH_PARAM.match(header, position)
        if param is not None and scheme is not None:
            params[param[1].lower()] = _unquoted(param[2])
            position, after_scheme = param.end(), False
            continue
        if after_scheme:
            token68 = _TOKEN68.match(header, position)
            if token68 is not None:
                position, after_scheme = token68.end(), False
                continue
        token = _AUTH_SCHEME.match(header, position)
        if token is None:
            break
        if scheme is not None:
            challenges.append(Challenge(scheme, params))
        scheme, params = token[0].lower(), {}
        position, after_scheme = token.end(), True
    if scheme is not None:
        challenges.append(Challenge(scheme, params))
    return tuple(challenges)


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return _QUOTED_PAIR.sub(r"\1", value[1:-1])
    return value


def api_host(registry: str) -> str:
    """The host[:port] that serves `registry`'s distribution API."""
    return DOCKER_HUB_API_HOST if registry == references.DOCKER_HUB else registry


def pull_scope(repository: outcomes.Repository) -> str:
    """The token scope that lets an anonymous client read `repository`."""
    return f"repository:{repository.name}:pull"


@dataclasses.dataclass(frozen=True)
class _Origin:
    scheme: str
    netloc: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}"


@dataclasses.dataclass(frozen=True)
class _Response:
    url: str
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    too_large: bool

    def error(self) -> tuple[str, str]:
        """(code, message) of the first error in a distribution error body, if any."""
        try:
            document = json.loads(self.body)
        except ValueError:
            return "", ""
        entries = document.get("errors") if isinstance(document, dict) else None
        if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
            return "", ""
        return str(entries[0].get("code", "")), str(entries[0].get("message", ""))

    def retry_after(self) -> float | None:
        value = self.headers.get("Retry-After", "").strip()
        return float(value) if value.isdigit() else None


@dataclasses.dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float


class _Transient(Exception):
    """A failure worth another attempt: 429, 5xx, a connection error or a timeout."""

    def __init__(
        self, problem: str, *, retry_after: float | None = None, throttled: bool = False
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after
        self.throttled = throttled


class _Refused(Exception):
    """The registry will not show this repository to an anonymous client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclasses.dataclass
class _Idle:
    connection: http.client.HTTPConnection
    since: float


class _ConnectionPool:
    """Idle keep-alive connections by origin, at most `max_idle` in all; thread-safe."""

    def __init__(self, max_idle: int, context: ssl.SSLContext) -> None:
        self._max_idle = max_idle
        self._context = context
        self._idle: dict[_Origin, list[_Idle]] = collections.defaultdict(list)
        self._count = 0
        self._lock = threading.Lock()

    def take(self, origin: _Origin, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to `origin` and whether it was used before."""
        now = time.monotonic()
        stale: list[http.client.HTTPConnection] = []
        found: http.client.HTTPConnection | None = None
        with self._lock:
            idle = self._idle.get(origin, [])
            while idle and found is None:
                entry = idle.pop()
                self._count -= 1
                if now - entry.since < _IDLE_CONNECTION_SECONDS:
                    found = entry.connection
                else:
                    stale.append(entry.connection)
        for connection in stale:
            connection.close()
        if found is not None:
            return found, True
        if origin.scheme == "https":
            return http.client.HTTPSConnection(
                origin.netloc, timeout=timeout, context=self._context
            ), False
        return http.client.HTTPConnection(origin.netloc, timeout=timeout), False

    def give_back(self, origin: _Origin, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if self._count < self._max_idle:
                self._idle[origin].append(_Idle(connection, time.monotonic()))
                self._count += 1
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            entries = [entry for idle in self._idle.values() for entry in idle]
            self._idle.clear()
            self._count = 0
        for entry in entries:
            entry.connection.close()


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
    ) -> None:
        self._insecure = frozenset(_insecure_entry(entry) for entry in insecure_registries)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._clock = clock
        context = ssl.create_default_context()
        if ca_file:
            try:
                context.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise errors.ConfigurationError(
                    f"registry CA file {ca_file}: cannot load it ({exc})"
                ) from exc
        self._pool = _ConnectionPool(max_idle_connections, context)
        self._tokens: collections.OrderedDict[tuple[str, str], _Token] = collections.OrderedDict()
        self._tokens_lock = threading.Lock()
        self._user_agent = f"digestguard/{__version__}"

    def close(self) -> None:
        """Close the idle connections; the client stays usable."""
        self._pool.close()

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
            response = self._attempts(
                lambda: self._get_manifest(repository, reference, budget_end),
                budget_end=budget_end,
                context=context,
            )
        except _Refused as exc:
            return outcomes.Unknown(f"{repository}: {exc.message}"), True
        return _outcome(repository, query, response)

    def _attempts(
        self,
        call: Callable[[], _Response],
        *,
        budget_end: float,
        context: dict[str, Any],
    ) -> _Response:
        """`call()`, retried with full-jitter backoff while the budget allows another try.

        Raises `_Refused` as it comes and `errors.RegistryError` when the budget is spent.
        """
        if budget_end - time.monotonic() <= 0:
            raise errors.DeadlineExceeded(f"{GET_MANIFEST} had no time left to try")
        attempt = 0
        while True:
            attempt += 1
            try:
                response = call()
            except _Transient as exc:
                outcome = "throttled" if exc.throttled else "error"
                metrics.REGISTRY_CALLS.labels(GET_MANIFEST, outcome).inc()
                problem, retry_after = exc.problem, exc.retry_after
            except (_Refused, errors.RegistryError):
                metrics.REGISTRY_CALLS.labels(GET_MANIFEST, "error").inc()
                raise
            else:
                answered = response.status in (200, 404) or (
                    response.status == 400 and response.error()[0] in MISSING_INVALID_CODES
                )
                metrics.REGISTRY_CALLS.labels(GET_MANIFEST, "ok" if answered else "error").inc()
                return response

            retries.pause_or_give_up(
                what=GET_MANIFEST,
                attempt=attempt,
                problem=problem,
                budget_end=budget_end,
                logger=logger,
                context=context,
                retry_after=retry_after or 0.0,
            )

    def _get_manifest(
        self, repository: outcomes.Repository, reference: str, budget_end: float
    ) -> _Response:
        """One GET of a manifest, through the anonymous token flow and redirects.

        Raises `_Transient` for 429/5xx/transport failures and `_Refused` when access
        is refused; any other answer is returned.
        """
        origin = self._origin(repository.registry)
        path = (
            f"/v2/{urllib.parse.quote(repository.name, safe='/')}"
            f"/manifests/{urllib.parse.quote(reference, safe=':')}"
        )
        url = f"{origin}{path}"
        token = self._cached_token((repository.registry, pull_scope(repository)))
        fresh_token = False
        redirects = 0
        while True:
            headers = {"Accept": ", ".join(protocol.ACCEPTED_MEDIA_TYPES)}
            if token is not None and _origin_of(url) == origin:
                headers["Authorization"] = f"Bearer {token}"
            response = self._exchange(url, headers, budget_end, MAX_MANIFEST_BYTES)
            if response.status in _REDIRECTS and redirects < MAX_REDIRECTS:
                redirects += 1
                url = self._redirect_target(response, repository.registry)
                continue
            if response.status == 401:
                if fresh_token:
                    raise _Refused(_unauthorized(repository, response, after_token=True))
                token = self._new_token(repository, response, budget_end)
                fresh_token = True
                continue
            if response.status == 429 or response.status >= 500:
                raise _Transient(
                    f"{url}: HTTP {response.status} {' '.join(response.error())}".rstrip(),
                    retry_after=response.retry_after(),
                    throttled=response.status == 429,
                )
            return response

    def _new_token(
        self, repository: outcomes.Repository, challenged: _Response, budget_end: float
    ) -> str:
        """An anonymous token for the Bearer challenge of a 401 answer, cached by scope."""
        bearer = next(
            (
                c
                for value in challenged.headers.get_all("WWW-Authenticate") or []
                for c in parse_challenges(value)
                if c.scheme == "bearer"
            ),
            None,
        )
        if bearer is None or not bearer.realm:
            raise _Refused(_unauthorized(repository, challenged, after_token=False))
        scope = bearer.scope or pull_scope(repository)
        realm = bearer.realm
        realm_origin = _origin_of(realm)
        if realm_origin is None or not self._may_use(realm_origin, repository.registry):
            raise _Refused(
                f"{repository.registry} sends clients to the token endpoint {realm!r},"
                " which is not an HTTPS URL (nor one of an insecure registry)"
            )
        query = {"scope": scope} | ({"service": bearer.service} if bearer.service else {})
        url = realm + ("&" if urllib.parse.urlsplit(realm).query else "?")
        url += urllib.parse.urlencode(query)
        asked_at = self._clock()
        try:
            response = self._exchange(
                url, {"Accept": "application/json"}, budget_end, _MAX_TOKEN_RESPONSE_BYTES
            )
        except _Transient as exc:
            metrics.REGISTRY_CALLS.labels(GET_TOKEN, "error").inc()
            raise _Transient(f"token endpoint: {exc.problem}") from exc
        if response.status == 429 or response.status >= 500:
            outcome = "throttled" if response.status == 429 else "error"
            metrics.REGISTRY_CALLS.labels(GET_TOKEN, outcome).inc()
            raise _Transient(
                f"token endpoint {realm}: HTTP {response.status}",
                retry_after=response.retry_after(),
                throttled=response.status == 429,
            )
        token, expires_in = _token_of(response)
        metrics.REGISTRY_CALLS.labels(GET_TOKEN, "ok" if token else "error").inc()
        if token is None:
            code, message = response.error()
            raise _Refused(
                f"the token endpoint {realm} gave no anonymous token for {scope}"
                f" (HTTP {response.status}{f' {code}: {message}' if code else ''});"
                " the repository may need credentials, which digestguard does not send"
            )
        key = (repository.registry, scope)
        with self._tokens_lock:
            self._tokens[key] = _Token(token, asked_at + expires_in)
            self._tokens.move_to_end(key)
            now = self._clock()
            for stale in [k for k, t in self._tokens.items() if t.expires_at <= now]:
                del self._tokens[stale]
            while len(self._tokens) > _MAX_TOKENS:
                self._tokens.popitem(last=False)
        return token

    def _cached_token(self, key: tuple[str, str]) -> str | None:
        with self._tokens_lock:
            cached = self._tokens.get(key)
            if cached is None:
                return None
            if self._clock() >= cached.expires_at - _TOKEN_EXPIRY_MARGIN_SECONDS:
                del self._tokens[key]
                return None
            return cached.value

    def _origin(self, registry: str) -> _Origin:
        scheme = "http" if registry in self._insecure else "https"
        return _Origin(scheme, api_host(registry))

    def _may_use(self, origin: _Origin, registry: str) -> bool:
        """Whether `registry` may send us to `origin`: plain HTTP only where it is allowed."""
        return origin.scheme == "https" or bool({origin.netloc, registry} & self._insecure)

    def _redirect_target(self, response: _Response, registry: str) -> str:
        location = response.headers.get("Location", "")
        target = urllib.parse.urljoin(response.url, location)
        origin = _origin_of(target)
        if not location or origin is None or not self._may_use(origin, registry):
            raise _Refused(
                f"{response.url} redirects to {location!r}, which is not an HTTPS URL"
                " (nor one of an insecure registry)"
            )
        return target

    def _exchange(
        self, url: str, headers: Mapping[str, str], budget_end: float, max_bytes: int
    ) -> _Response:
        """One GET of `url` on a pooled connection, its body read up to `max_bytes`."""
        origin = _origin_of(url)
        assert origin is not None, url
        split = urllib.parse.urlsplit(url)
        target = (split.path or "/") + (f"?{split.query}" if split.query else "")
        headers = {"User-Agent": self._user_agent, **headers}
        retried_on_a_new_connection = False
        while True:
            time_left = budget_end - time.monotonic()
            if time_left <= 0:
                raise _Transient("the time budget ran out")
            connection, reused = self._pool.take(origin, min(self._connect_timeout, time_left))
            try:
                if connection.sock is None:
                    connection.timeout = min(self._connect_timeout, time_left)
                    connection.connect()
                read_timeout = min(self._read_timeout, budget_end - time.monotonic())
                connection.sock.settimeout(max(read_timeout, retries.MIN_ATTEMPT_SECONDS))
                connection.request("GET", target, headers=headers)
                answer = connection.getresponse()
                body = answer.read(max_bytes + 1)
            except ssl.SSLError as exc:
                connection.close()
                if isinstance(exc, ssl.SSLCertVerificationError) or exc.reason in {
                    "WRONG_VERSION_NUMBER",
                    "RECORD_LAYER_FAILURE",
                }:
                    raise errors.RegistryError(
                        f"TLS with {origin.netloc} failed: {exc}; trust its CA with"
                        " --registry-ca-file, or list it in --insecure-registries if it"
                        " serves plain HTTP"
                    ) from exc
                raise _Transient(f"{url}: {type(exc).__name__}: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                # A kept-alive connection the server has closed meanwhile: try a new one.
                stale = reused and isinstance(exc, _STALE_CONNECTION_ERRORS)
                if stale and not retried_on_a_new_connection:
                    retried_on_a_new_connection = True
                    continue
                raise _Transient(f"{url}: {type(exc).__name__}: {exc}") from exc
            too_large = len(body) > max_bytes
            if too_large or answer.will_close:
                connection.close()
            else:
                self._pool.give_back(origin, connection)
            return _Response(url, answer.status, answer.headers, body[:max_bytes], too_large)


_STALE_CONNECTION_ERRORS: Final = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
)


def _insecure_entry(entry: str) -> str:
    host = entry.strip().lower()
    if not host or "/" in host or "@" in host:
        raise errors.ConfigurationError(
            f"insecure registry {entry!r} is not a host[:port] (no scheme, no path)"
        )
    return host


def _origin_of(url: str) -> _Origin | None:
    split = urllib.parse.urlsplit(url)
    if split.scheme not in ("http", "https") or not split.netloc:
        return None
    return _Origin(split.scheme, split.netloc.lower())


def _unauthorized(
    repository: outcomes.Repository, response: _Response, *, after_token: bool
) -> str:
    code, message = response.error()
    said = f"HTTP 401{f' {code}: {message}' if code else ''}"
    if after_token:
        return (
            f"{repository.registry} refused the anonymous token for {repository.name} ({said}):"
            " the repository does not exist or needs credentials, which digestguard does"
            " not send"
        )
    challenge = response.headers.get("WWW-Authenticate", "") or "no WWW-Authenticate"
    return (
        f"{repository.registry} requires credentials for {repository.name} ({said},"
        f" {challenge}); digestguard pulls anonymously"
    )


def _token_of(response: _Response) -> tuple[str | None, float]:
    """The token of a token endpoint's answer (`token` or `access_token`) and its lifetime."""
    if response.status != 200 or response.too_large:
        return None, 0.0
    try:
        document = json.loads(response.body)
    except ValueError:
        return None, 0.0
    if not isinstance(document, dict):
        return None, 0.0
    token = document.get("token") or document.get("access_token")
    expires_in = document.get("expires_in")
    lifetime = (
        float(expires_in)
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool)
        else _DEFAULT_TOKEN_SECONDS
    )
    return (token if isinstance(token, str) and token else None), lifetime


def _outcome(
    repository: outcomes.Repository, query: outcomes.Query, response: _Response
) -> tuple[outcomes.Outcome, bool]:
    """What a final answer says about the query, and whether it holds for the whole repository."""
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
        return outcomes.Unknown(
            f"{repository}: {repository.registry} denied anonymous access ({said})"
        ), True
    return outcomes.Unknown(f"{query}: {repository.registry} answered {said}"), False


def _verified(
    repository: outcomes.Repository, query: outcomes.Query, response: _Response
) -> outcomes.Outcome:
    """The manifest's digest, once its bytes are proven to hash to it."""
    registry = repository.registry
    if response.too_large:
        return outcomes.Unknown(
            f"{query}: {registry} sent a manifest larger than {MAX_MANIFEST_BYTES} bytes"
        )
    media_type = response.headers.get_content_type()
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
    claimed = query.digest or reported
    if claimed is None:
        # No digest to check against: the content is its own digest, as a runtime sees it.
        claimed = "sha256:" + hashlib.sha256(response.body).hexdigest()
    algorithm, _, expected = claimed.partition(":")
    if algorithm not in _HASHES or not expected:
        return outcomes.Corrupt(
            f"{registry} gave {query} the digest {claimed!r}, which cannot be verified"
        )
    actual = hashlib.new(algorithm, response.body).hexdigest()
    if actual != expected.lower():
        return outcomes.Corrupt(
            f"{registry} returned a manifest for {query} (said to be {claimed}) that hashes"
            f" to {algorithm}:{actual}: integrity check failed"
        )
    return outcomes.Found(references.Digest(claimed), media_type)
