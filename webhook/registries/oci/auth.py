"""The Bearer token flow of the distribution API: `WWW-Authenticate` challenges and the
tokens they lead to, anonymous unless there are credentials for the registry (the
command line's from the user's Docker config, the webhook's from its pull Secrets; both
`dockerconfig.Credential`s), which then go to the token endpoint as Basic credentials,
or to the registry itself when it asks for Basic.

The webhook's credentials change while it runs (`Tokens.replace_credentials`): the
tokens and the Basic choice of a registry whose credential changed are forgotten at
once, and a token fetched with a credential that was replaced meanwhile is not kept.

A registry that wants a token answers 401 with `WWW-Authenticate: Bearer realm=…,
service=…,scope=…`; the token endpoint (`realm`) hands an anonymous client a token for
`scope` of `service`. A token is kept until its `expires_in`, keyed by what it was
issued for — (realm, service, scope) — and each registry's last challenge is
remembered, so the next request to that registry carries a token at once instead of
being challenged again.
"""

import base64
import collections
import dataclasses
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Final

from webhook import errors, metrics
from webhook.core import outcomes
from webhook.registries.oci import dockerconfig, transport

GET_TOKEN: Final = "GetToken"
"""Operation label of the registry metrics."""

DEFAULT_TOKEN_SECONDS: Final = 60.0
"""A token without `expires_in` lives this long (the distribution token spec's default)."""
TOKEN_EXPIRY_MARGIN_SECONDS: Final = 5.0
"""A cached token is not used this close to its expiry: it could expire on the way."""
MAX_TOKENS: Final = 10_000
MAX_TOKEN_RESPONSE_BYTES: Final = 1024 * 1024

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


def pull_scope(repository: outcomes.Repository) -> str:
    """The token scope that lets an anonymous client read `repository`."""
    return f"repository:{repository.name}:pull"


def unauthorized(
    repository: outcomes.Repository,
    response: transport.Response,
    *,
    after_token: bool,
    credentials_from: str | None = None,
) -> str:
    """Why a 401 answer means the repository is closed to this client; `credentials_from`
    names where the credentials sent came from (None: none were sent)."""
    code, message = response.error()
    said = f"HTTP 401{f' {code}: {message}' if code else ''}"
    if credentials_from is not None:
        return (
            f"{repository.registry} refused the credentials of {credentials_from} for"
            f" {repository.name} ({said})"
        )
    if after_token:
        return (
            f"{repository.registry} refused the anonymous token for {repository.name} ({said}):"
            f" the repository does not exist or needs credentials, and digestguard has none"
            f" for {repository.registry}"
        )
    challenge = response.headers.get("WWW-Authenticate", "") or "no WWW-Authenticate"
    return (
        f"{repository.registry} requires credentials for {repository.name} ({said},"
        f" {challenge}); digestguard has none for {repository.registry}"
    )


@dataclasses.dataclass(frozen=True)
class _Issuer:
    """Where a registry's tokens come from: a challenge's realm and service."""

    realm: str
    service: str | None


@dataclasses.dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float


class Tokens:
    """Anonymous tokens, fetched through `transport` and kept until they expire; thread-safe.

    `may_go_to(origin, registry)` says whether `registry` may send us to `origin` (for
    its token endpoint); `clock` times expiry.
    """

    def __init__(
        self,
        transport_: transport.Transport,
        *,
        may_go_to: Callable[[transport.Origin, str], bool],
        clock: Callable[[], float],
        credentials: dockerconfig.Credentials | None = None,
    ) -> None:
        self._transport = transport_
        self._may_go_to = may_go_to
        self._clock = clock
        self._credentials: Mapping[str, dockerconfig.Credential] = dict(credentials or {})
        self._generation = 0
        """Counts the replacements of the credentials: a token fetched across one is not kept."""
        self._scoped: collections.OrderedDict[tuple[str, str], dockerconfig.Credential] = (
            collections.OrderedDict()
        )
        """(credential scope, registry) -> a pod namespace's credential (`put_scoped`)."""
        self._basic: set[tuple[str, str]] = set()
        """(registry, credential scope)s that asked for Basic credentials (and have them)."""
        self._tokens: collections.OrderedDict[tuple[_Issuer, str, str], _Token] = (
            collections.OrderedDict()
        )
        """By (issuer, token scope, credential scope): a token got with one credential is
        never sent for a request made with another, or with none."""
        self._issuers: dict[str, _Issuer] = {}
        self._lock = threading.Lock()

    def has_credentials(self, registry: str, scope: str = "") -> bool:
        return self._credential(registry, scope) is not None

    def credentials_from(self, registry: str, scope: str = "") -> str | None:
        """Where the credential sent to `registry` comes from, or None when there is none."""
        credential = self._credential(registry, scope)
        return None if credential is None else credential.source

    def put_scoped(self, scope: str, registry: str, credential: dockerconfig.Credential) -> None:
        """Send `credential` to `registry` for the queries of credential `scope`."""
        with self._lock:
            key = (scope, registry)
            self._scoped[key] = credential
            self._scoped.move_to_end(key)
            while len(self._scoped) > MAX_TOKENS:
                self._scoped.popitem(last=False)

    def _credential(self, registry: str, scope: str) -> dockerconfig.Credential | None:
        """The credential of a request of credential `scope`: a scope's own (none when it
        was forgotten: such a request goes anonymous, never with another's), or else the
        webhook's."""
        if scope:
            with self._lock:
                return self._scoped.get((scope, registry))
        return self._credentials.get(registry)

    def replace_credentials(self, credentials: dockerconfig.Credentials) -> frozenset[str]:
        """Use `credentials` from now on; returns the registries whose credential changed
        (added, removed or different), whose tokens and Basic choice are forgotten."""
        with self._lock:
            old = self._credentials
            new = dict(credentials)
            changed = frozenset(
                registry
                for registry in old.keys() | new.keys()
                if old.get(registry) != new.get(registry)
            )
            if not changed:
                return changed
            self._credentials = new
            self._generation += 1
            self._basic -= {(registry, "") for registry in changed}
            for registry in changed:
                issuer = self._issuers.get(registry)
                if issuer is None:
                    continue
                for key in [k for k in self._tokens if k[0] == issuer and not k[2]]:
                    del self._tokens[key]
        return changed

    def cached(self, repository: outcomes.Repository, scope: str = "") -> str | None:
        """A live token for pulling `repository` with the credentials of `scope`, from its
        registry's last challenge."""
        with self._lock:
            issuer = self._issuers.get(repository.registry)
            if issuer is None:
                return None
            key = (issuer, pull_scope(repository), scope)
            cached = self._tokens.get(key)
            if cached is None:
                return None
            if self._clock() >= cached.expires_at - TOKEN_EXPIRY_MARGIN_SECONDS:
                del self._tokens[key]
                return None
            return cached.value

    def cached_authorization(self, repository: outcomes.Repository, scope: str = "") -> str | None:
        """The `Authorization` to send at once to `repository`'s registry, if known."""
        with self._lock:
            basic = (repository.registry, scope) in self._basic
        if basic:
            return self._basic_header(repository.registry, scope)
        token = self.cached(repository, scope)
        return None if token is None else f"Bearer {token}"

    def authorization(
        self,
        repository: outcomes.Repository,
        challenged: transport.Response,
        budget_end: float,
        scope: str = "",
    ) -> str:
        """The `Authorization` that answers the challenge of a 401: a Bearer token (fetched
        with the credentials of `scope` when there are some), or the credentials
        themselves for a Basic challenge. Raises as `fetched` does."""
        challenges = [
            c
            for value in challenged.header_values("WWW-Authenticate")
            for c in parse_challenges(value)
        ]
        basic = self._basic_header(repository.registry, scope)
        schemes = {c.scheme for c in challenges}
        if basic is not None and "basic" in schemes and "bearer" not in schemes:
            with self._lock:
                self._basic.add((repository.registry, scope))
            return basic
        return f"Bearer {self.fetched(repository, challenged, budget_end, scope)}"

    def _basic_header(self, registry: str, scope: str = "") -> str | None:
        credential = self._credential(registry, scope)
        if credential is None:
            return None
        pair = f"{credential.username}:{credential.password}".encode()
        return f"Basic {base64.b64encode(pair).decode()}"

    def fetched(
        self,
        repository: outcomes.Repository,
        challenged: transport.Response,
        budget_end: float,
        scope: str = "",
    ) -> str:
        """A new token for the Bearer challenge of a 401 answer, with the credentials of
        `scope` (anonymous when there are none).

        Raises `errors.Refused` when there is no Bearer challenge or no token is
        given, and `errors.Retryable` when the token endpoint is throttled, failing
        or unreachable.
        """
        bearer = next(
            (
                c
                for value in challenged.header_values("WWW-Authenticate")
                for c in parse_challenges(value)
                if c.scheme == "bearer"
            ),
            None,
        )
        if bearer is None or not bearer.realm:
            raise errors.Refused(unauthorized(repository, challenged, after_token=False))
        token_scope = bearer.scope or pull_scope(repository)
        realm = bearer.realm
        realm_origin = transport.origin_of(realm)
        if realm_origin is None or not self._may_go_to(realm_origin, repository.registry):
            raise errors.Refused(
                f"{repository.registry} sends clients to the token endpoint {realm!r},"
                " which is not an HTTPS URL (nor one of an insecure registry)"
            )
        with self._lock:
            generation = self._generation
        query = {"scope": token_scope} | ({"service": bearer.service} if bearer.service else {})
        url = realm + ("&" if urllib.parse.urlsplit(realm).query else "?")
        url += urllib.parse.urlencode(query)
        asked_at = self._clock()
        try:
            response = self._transport.get(
                url,
                headers={"Accept": "application/json"},
                authorization=self._basic_header(repository.registry, scope),
                budget_end=budget_end,
                max_bytes=MAX_TOKEN_RESPONSE_BYTES,
                may_go_to=lambda origin: self._may_go_to(origin, repository.registry),
                max_redirects=0,
            )
        except errors.Retryable as exc:
            metrics.REGISTRY_CALLS.labels(GET_TOKEN, "error").inc()
            raise errors.Retryable(f"token endpoint: {exc.problem}") from exc
        if response.status == 429 or response.status >= 500:
            outcome = "throttled" if response.status == 429 else "error"
            metrics.REGISTRY_CALLS.labels(GET_TOKEN, outcome).inc()
            raise errors.Retryable(
                f"token endpoint {realm}: HTTP {response.status}",
                retry_after=response.retry_after(),
                throttled=response.status == 429,
            )
        token, expires_in = _token_of(response)
        metrics.REGISTRY_CALLS.labels(GET_TOKEN, "ok" if token else "error").inc()
        if token is None:
            code, message = response.error()
            source = self.credentials_from(repository.registry, scope)
            if source is not None:
                raise errors.Refused(
                    f"the token endpoint {realm} refused the credentials of {source}"
                    f" for {repository.registry} (HTTP {response.status}"
                    f"{f' {code}: {message}' if code else ''}), or gave no token for {token_scope}"
                )
            raise errors.Refused(
                f"the token endpoint {realm} gave no anonymous token for {token_scope}"
                f" (HTTP {response.status}{f' {code}: {message}' if code else ''});"
                f" the repository may need credentials, and digestguard has none for"
                f" {repository.registry}"
            )
        issuer = _Issuer(realm, bearer.service)
        key = (issuer, token_scope, scope)
        with self._lock:
            if generation != self._generation and not scope:
                # Fetched with credentials replaced meanwhile: good for this request only.
                return token
            self._issuers.pop(repository.registry, None)
            self._issuers[repository.registry] = issuer
            self._tokens[key] = _Token(token, asked_at + expires_in)
            self._tokens.move_to_end(key)
            now = self._clock()
            for stale in [k for k, t in self._tokens.items() if t.expires_at <= now]:
                del self._tokens[stale]
            while len(self._tokens) > MAX_TOKENS:
                self._tokens.popitem(last=False)
            while len(self._issuers) > MAX_TOKENS:
                del self._issuers[next(iter(self._issuers))]
        return token


def _token_of(response: transport.Response) -> tuple[str | None, float]:
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
        else DEFAULT_TOKEN_SECONDS
    )
    return (token if isinstance(token, str) and token else None), lifetime
