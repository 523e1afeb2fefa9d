"""A small OCI distribution stub: what a real registry will not do, over HTTP on loopback.

It serves `GET /v2/<name>/manifests/<reference>` from `manifests` (and HEAD, when
`head` is set), and can be told to
answer the next requests with queued answers (429, 503, a redirect, HTML…), to report a
`Docker-Content-Digest` that is not the one of the bytes it sends, and to demand the
anonymous Bearer token flow (its own `/token` endpoint) or Basic credentials. It
records every request.

    with OciStub() as stub:
        stub.manifests[("app", "v1")] = (manifest_bytes, media_type)
        stub.queue(Answer(429), Answer(503))
        ...  # point an OciClient at stub.host, listed as an insecure registry
"""

import base64
import dataclasses
import hashlib
import http.server
import json
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final, Self

BEARER: Final = "bearer"
BASIC: Final = "basic"


@dataclasses.dataclass(frozen=True)
class Answer:
    """A canned answer to one manifest request."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Received:
    path: str
    headers: Mapping[str, str]
    method: str = "GET"


class OciStub:
    """The stub server, in a background thread of this process."""

    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        """(repository, tag or digest) → (manifest bytes, media type)."""
        self.reported_digests: dict[tuple[str, str], str] = {}
        """(repository, tag or digest) → the Docker-Content-Digest to report instead."""
        self.missing_repositories: set[str] = set()
        """Repositories answered with 404 NAME_UNKNOWN."""
        self.head = False
        """Answer HEAD as a registry does (headers only); off, HEAD is 501, as a server
        without it answers."""
        self.auth: str | None = None
        """None, BEARER (anonymous token flow) or BASIC (credentials required)."""
        self.basic_account: tuple[str, str] | None = None
        """BASIC mode: the (user, password) accepted; None accepts nobody."""
        self.token_expires_in = 300
        self.refuse_tokens = False
        """Bearer mode: the token endpoint answers 401 instead of a token."""
        self.tokens_issued = 0
        self.drop_connections = False
        """Close every connection after its answer without saying so (no `Connection: close`),
        as a server whose keep-alive timeout is shorter than the client's."""
        self._queued: list[Answer] = []
        self._received: list[Received] = []
        self._valid_tokens: set[str] = set()
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def queue(self, *answers: Answer) -> None:
        """Answer the next manifest requests with these, one each, before serving normally."""
        with self._lock:
            self._queued.extend(answers)

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def manifest_requests(self) -> int:
        """Manifest GETs (what Docker Hub counts as pulls); HEADs are in `received`."""
        return sum("/manifests/" in r.path and r.method == "GET" for r in self.received())

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._serve("GET")

            def do_HEAD(self) -> None:
                if not stub.head:
                    with stub._lock:
                        stub._received.append(
                            Received(self.path, dict(self.headers.items()), "HEAD")
                        )
                    self.send_error(501, "Unsupported method ('HEAD')")
                    return
                self._serve("HEAD")

            def _serve(self, method: str) -> None:
                self._head_only = method == "HEAD"
                with stub._lock:
                    stub._received.append(Received(self.path, dict(self.headers.items()), method))
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/token":
                    self._token(urllib.parse.parse_qs(url.query))
                    return
                if not self._authorized():
                    return
                with stub._lock:
                    queued = stub._queued.pop(0) if stub._queued else None
                if queued is not None:
                    self._send(queued.status, queued.body, queued.headers)
                    return
                name, _, reference = url.path.removeprefix("/v2/").rpartition("/manifests/")
                if name in stub.missing_repositories:
                    self._error(404, "NAME_UNKNOWN", "repository name not known to registry")
                    return
                found = stub.manifests.get((name, reference))
                if found is None:
                    self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
                    return
                body, media_type = found
                digest = stub.reported_digests.get(
                    (name, reference), "sha256:" + hashlib.sha256(body).hexdigest()
                )
                self._send(200, body, {"Content-Type": media_type, "Docker-Content-Digest": digest})

            def _authorized(self) -> bool:
                given = self.headers.get("Authorization", "")
                if stub.auth == BASIC and stub.basic_account is not None:
                    pair = ":".join(stub.basic_account).encode()
                    if given == "Basic " + base64.b64encode(pair).decode():
                        return True
                if stub.auth == BASIC:
                    self._error(
                        401,
                        "UNAUTHORIZED",
                        "authentication required",
                        {"WWW-Authenticate": 'Basic realm="stub"'},
                    )
                    return False
                if stub.auth == BEARER and given.removeprefix("Bearer ") not in stub._valid_tokens:
                    name = self.path.removeprefix("/v2/").rpartition("/manifests/")[0]
                    challenge = (
                        f'Bearer realm="{stub.url}/token",service="stub",'
                        f'scope="repository:{name}:pull"'
                    )
                    self._error(
                        401,
                        "UNAUTHORIZED",
                        "authentication required",
                        {"WWW-Authenticate": challenge},
                    )
                    return False
                return True

            def _token(self, query: Mapping[str, list[str]]) -> None:
                if stub.refuse_tokens:
                    self._error(401, "UNAUTHORIZED", "no anonymous access")
                    return
                with stub._lock:
                    stub.tokens_issued += 1
                    token = f"token-{stub.tokens_issued}-{query.get('scope', [''])[0]}"
                    stub._valid_tokens.add(token)
                body = json.dumps({"token": token, "expires_in": stub.token_expires_in}).encode()
                self._send(200, body, {"Content-Type": "application/json"})

            def _error(
                self,
                status: int,
                code: str,
                message: str,
                headers: Mapping[str, str] | None = None,
            ) -> None:
                body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
                self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

            def _send(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not getattr(self, "_head_only", False):
                    self.wfile.write(body)
                if stub.drop_connections:
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
