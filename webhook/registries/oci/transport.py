"""GETs for the OCI client: urllib3's keep-alive pool, timeouts inside the call's budget,
redirects under our own rules, and bodies read only up to a limit.

urllib3 owns the connections (one thread-safe pool per origin, TLS verified with the
system CAs and those of `ca_file`); its retries are off, so the budget-aware loop of
`retries.call` is the only one. Redirects are followed here rather than by urllib3,
because where one may lead is a security rule of ours: never from HTTPS to plain HTTP
(unless that registry is listed as insecure), and the `Authorization` header goes only
to the origin it was meant for — a registry that sends clients to blob storage must not
hand its token to that storage.
"""

import dataclasses
import http.client
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Final

import urllib3
import urllib3.exceptions

from webhook import __version__, errors
from webhook.registries import retries

REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS: Final = 5
_POOLED_ORIGINS: Final = 16
"""Origins whose idle connections are kept (the registries and token endpoints in use)."""
_PLAIN_HTTP_ON_TLS: Final = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"})
"""How OpenSSL says the server answered a TLS hello in plain HTTP."""
_STALE_CONNECTION_ERRORS: Final = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
)
"""What a kept-alive connection the server has closed meanwhile fails with."""


@dataclasses.dataclass(frozen=True)
class Origin:
    scheme: str
    netloc: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}"


def origin_of(url: str) -> Origin | None:
    """The scheme and host[:port] of an absolute http(s) URL; None for any other URL."""
    split = urllib.parse.urlsplit(url)
    if split.scheme not in ("http", "https") or not split.netloc:
        return None
    return Origin(split.scheme, split.netloc.lower())


@dataclasses.dataclass(frozen=True)
class Response:
    """A final answer (not a redirect we followed), its body cut at the read limit."""

    url: str
    status: int
    headers: urllib3.HTTPHeaderDict
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

    def content_type(self) -> str:
        """The media type of `Content-Type`, lowercased, without parameters (`text/plain`
        when there is none, as for a message without the header)."""
        value = self.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        return value if value.count("/") == 1 else "text/plain"

    def header_values(self, name: str) -> list[str]:
        return list(self.headers.getlist(name))


class Transport:
    """Blocking GETs (and HEADs) on pooled keep-alive connections; one instance serves every
    thread.

    Each attempt is bounded by `connect_timeout` and `read_timeout`, and both by what is
    left of the caller's budget. `max_idle_connections` are kept per origin.
    """

    def __init__(
        self,
        *,
        ca_file: str | None,
        connect_timeout: float,
        read_timeout: float,
        max_idle_connections: int,
    ) -> None:
        context = ssl.create_default_context()
        if ca_file:
            try:
                context.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise errors.ConfigurationError(
                    f"registry CA file {ca_file}: cannot load it ({exc})"
                ) from exc
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._pool = urllib3.PoolManager(
            num_pools=_POOLED_ORIGINS,
            maxsize=max_idle_connections,
            ssl_context=context,
            retries=False,
            headers={"User-Agent": f"digestguard/{__version__}"},
        )

    def close(self) -> None:
        """Close the idle connections; the transport stays usable."""
        self._pool.clear()

    def get(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        budget_end: float,
        max_bytes: int,
        may_go_to: Callable[[Origin], bool],
        authorization: str | None = None,
        max_redirects: int = MAX_REDIRECTS,
        method: str = "GET",
    ) -> Response:
        """The answer to a GET (or `method` HEAD) of `url`, through at most `max_redirects`
        redirects.

        `authorization` is sent only to the origin of `url`; a redirect is followed
        only to an origin `may_go_to` accepts, else `errors.Refused`. Raises
        `errors.Retryable` for a connection error or a timeout, and
        `errors.RegistryError` when TLS cannot work (not worth another attempt).
        """
        authorized = origin_of(url)
        redirects = 0
        while True:
            origin = origin_of(url)
            if origin is None:
                raise errors.Refused(f"{url!r} is not an HTTP(S) URL")
            sent = dict(headers)
            if authorization is not None and origin == authorized:
                sent["Authorization"] = authorization
            response = self._exchange(url, origin, sent, budget_end, max_bytes, method)
            if response.status not in REDIRECTS or redirects >= max_redirects:
                return response
            redirects += 1
            location = response.headers.get("Location", "")
            target = urllib.parse.urljoin(url, location)
            target_origin = origin_of(target)
            if not location or target_origin is None or not may_go_to(target_origin):
                raise errors.Refused(
                    f"{url} redirects to {location!r}, which is not an HTTPS URL"
                    " (nor one of an insecure registry)"
                )
            url = target

    def _exchange(
        self,
        url: str,
        origin: Origin,
        headers: Mapping[str, str],
        budget_end: float,
        max_bytes: int,
        method: str,
    ) -> Response:
        """One request of `url` on a pooled connection, its body read up to `max_bytes`."""
        replaced_a_stale_connection = False
        while True:
            time_left = budget_end - time.monotonic()
            if time_left <= 0:
                raise errors.Retryable("the time budget ran out")
            timeout = urllib3.Timeout(
                connect=min(self._connect_timeout, time_left),
                read=max(min(self._read_timeout, time_left), retries.MIN_ATTEMPT_SECONDS),
            )
            try:
                answer = self._pool.request(
                    method,
                    url,
                    headers=headers,
                    timeout=timeout,
                    redirect=False,
                    preload_content=False,
                )
                try:
                    body = answer.read(max_bytes + 1)
                except BaseException:
                    _discard(answer)
                    raise
            except urllib3.exceptions.SSLError as exc:
                raise _tls_failure(url, origin, exc) from exc
            except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as exc:
                # A kept-alive connection the server has closed meanwhile: try a new one.
                if _is_stale_connection(exc) and not replaced_a_stale_connection:
                    replaced_a_stale_connection = True
                    continue
                raise errors.Retryable(
                    f"{url}: {_describe(exc)}", refused=errors.connection_refused(exc)
                ) from exc
            too_large = len(body) > max_bytes
            if too_large:
                # The rest is not worth reading: drop the connection instead.
                _discard(answer)
            else:
                answer.release_conn()
            return Response(url, answer.status, answer.headers, body[:max_bytes], too_large)


def _discard(answer: urllib3.BaseHTTPResponse) -> None:
    """Close the connection of a half-read answer, and give its slot back to the pool."""
    answer.close()
    answer.release_conn()


def _tls_failure(
    url: str, origin: Origin, exc: urllib3.exceptions.SSLError
) -> errors.RegistryError | errors.Retryable:
    """A configuration problem (untrusted CA, plain HTTP) or, otherwise, a transient one."""
    cause = next((a for a in exc.args if isinstance(a, ssl.SSLError)), None)
    if isinstance(cause, ssl.SSLCertVerificationError) or (
        cause is not None and cause.reason in _PLAIN_HTTP_ON_TLS
    ):
        return errors.RegistryError(
            f"TLS with {origin.netloc} failed: {cause}; trust its CA with"
            " --registry-ca-file, or list it in --insecure-registries if it"
            " serves plain HTTP"
        )
    return errors.Retryable(f"{url}: {_describe(exc)}")


def _is_stale_connection(exc: BaseException) -> bool:
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return any(isinstance(arg, _STALE_CONNECTION_ERRORS) for arg in exc.args)
    return isinstance(exc, _STALE_CONNECTION_ERRORS)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
