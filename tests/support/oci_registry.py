"""A real OCI registry on loopback: CNCF distribution (Debian package `docker-registry`).

Two shapes, both started from a config file written here, with filesystem storage in
a temporary directory:

- **open** (`start_registry()`): plain HTTP, no authentication;
- **secured** (`start_registry(secured=True)`): HTTPS with a self-signed certificate,
  and distribution's `auth: token`, backed by `TokenServer`, a token server of ours
  (HTTPS too) that hands out anonymous tokens — JWTs signed with a key whose
  self-signed certificate is distribution's `rootcertbundle`, carried in `x5c`;
- **secured with users** (`start_registry(secured=True, users={"alice": "s3cret"})`):
  the token server checks Basic credentials against those users (what an htpasswd
  file behind a token service does): wrong ones get 401, and an anonymous client gets
  a token granting nothing on the repositories under `private` prefixes (`private/` by
  default), as Docker Hub's token service answers for a private repository.

Images are pushed with the registry API itself (monolithic blob uploads, POST then
PUT, then a PUT of the manifest), from the manifest builders of `ecr_emulator`.

Without the binary the tests that need it are skipped with a loud `REGISTRY SKIPPED`
reason; with `DIGESTGUARD_REQUIRE_E2E=1` (CI) that is a failure instead.
"""

import base64
import contextlib
import dataclasses
import datetime
import hmac
import http.server
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.support import ecr_emulator, ports

BINARY: Final = "docker-registry"
SKIPPED: Final = "REGISTRY SKIPPED: docker-registry not installed; apt-get install docker-registry"
SERVICE: Final = "digestguard-test-registry"
ISSUER: Final = "digestguard-test-token-issuer"
HOST: Final = "localhost"
"""The name images use: the reference grammar takes `localhost:PORT` as a registry host."""


def require_binary() -> str:
    """The registry binary's path; skip (or, in CI, fail) loudly when it is not installed."""
    path = shutil.which(BINARY)
    if path is None:
        if os.environ.get("DIGESTGUARD_REQUIRE_E2E") == "1":
            pytest.fail(SKIPPED.replace("SKIPPED", "REQUIRED"), pytrace=False)
        pytest.skip(SKIPPED)
    return path


@dataclasses.dataclass(frozen=True)
class Certificate:
    """A self-signed certificate and its key, as PEM files and objects."""

    cert_file: Path
    key_file: Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def self_signed(directory: Path, name: str, hosts: tuple[str, ...] = ()) -> Certificate:
    """An EC P-256 self-signed certificate for `hosts` (DNS names or IP addresses)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_file, key_file, certificate, key)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues tokens for distribution's `auth: token`, over HTTPS on loopback.

    `GET /token?service=…&scope=repository:NAME:ACTIONS` answers `{"token", "access_token",
    "expires_in", "issued_at"}`, granting the actions asked for — except on repositories
    in `refused`, which get a token granting nothing. With `users`, Basic credentials
    are checked: a wrong user or password is answered 401; an anonymous client gets a
    token granting nothing on repositories under a `private` prefix. Every request is
    recorded: its scopes, and the user it authenticated as ("" for anonymous).
    """

    def __init__(
        self,
        tls: Certificate,
        signer: Certificate,
        *,
        expires_in: int = 300,
        users: Mapping[str, str] | None = None,
        private: tuple[str, ...] = ("private/",),
    ) -> None:
        self.signer = signer
        self.expires_in = expires_in
        self.refused: set[str] = set()
        self.users: dict[str, str] = dict(users or {})
        """user -> password, checked as an htpasswd file is (changed to rotate one)."""
        self.private = private
        self.scopes: list[str] = []
        self.authenticated: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                if url.path != "/token" or query.get("service") != [SERVICE]:
                    self.send_error(404)
                    return
                scopes = query.get("scope", [])
                authorization = self.headers.get("Authorization", "")
                user = server.user_of(authorization) if authorization else ""
                if user is None:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="token"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with server._lock:
                    server.scopes.extend(scopes)
                    server.authenticated.append(user)
                token = server.issue(*scopes, anonymous=not user)
                body = json.dumps(
                    {
                        "token": token,
                        "access_token": token,
                        "expires_in": server.expires_in,
                        "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self.realm = f"https://{HOST}:{self.port}/token"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def user_of(self, authorization: str) -> str | None:
        """The user `authorization` (`Basic …`) authenticates as; None when it does not.

        Without `users` nobody is checked: every client is anonymous ("")."""
        if not self.users:
            return ""
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return None
        expected = self.users.get(user)
        if expected is None or not hmac.compare_digest(expected, password):
            return None
        return user

    def issue(self, *scopes: str, anonymous: bool = False) -> str:
        """A signed token granting `scopes` (`repository:NAME:pull,push`); for an
        `anonymous` client (with `users`), nothing on the `private` repositories."""
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            hidden = anonymous and bool(self.users) and name.startswith(self.private)
            granted = [] if name in self.refused or hidden else actions.split(",")
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [
                base64.b64encode(
                    self.signer.certificate.public_bytes(serialization.Encoding.DER)
                ).decode()
            ],
        }
        claims = {
            "iss": ISSUER,
            "sub": "",
            "aud": SERVICE,
            "exp": now + self.expires_in,
            "nbf": now - 60,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        der = self.signer.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64url(signature)}"

    def requests_for(self, scope: str) -> int:
        with self._lock:
            return self.scopes.count(scope)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@dataclasses.dataclass
class Registry:
    """A running registry; `host` (`localhost:PORT`) is what image references name."""

    host: str
    url: str
    process: "subprocess.Popen[bytes]"
    directory: Path
    ca_file: Path | None = None
    token_server: TokenServer | None = None

    def image(self, repository: str, tag: str | None = None, digest: str | None = None) -> str:
        return (
            f"{self.host}/{repository}"
            + (f":{tag}" if tag else "")
            + (f"@{digest}" if digest else "")
        )

    def push_blob(self, repository: str, blob: bytes) -> str:
        """A monolithic upload: POST for an upload URL, then PUT the bytes with their digest."""
        digest = ecr_emulator.digest_of(blob)
        started = self._call("POST", f"/v2/{repository}/blobs/uploads/", repository, b"")
        location = urllib.parse.urljoin(self.url + "/", started.headers["Location"])
        separator = "&" if urllib.parse.urlsplit(location).query else "?"
        self._call(
            "PUT",
            f"{location}{separator}digest={urllib.parse.quote(digest)}",
            repository,
            blob,
            {"Content-Type": "application/octet-stream"},
        )
        return digest

    def push_manifest(
        self, repository: str, reference: str, manifest: bytes, media_type: str
    ) -> str:
        """PUT a manifest under a tag (or its digest); returns its digest."""
        self._call(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            repository,
            manifest,
            {"Content-Type": media_type},
        )
        return ecr_emulator.digest_of(manifest)

    def push_image(
        self,
        repository: str,
        tag: str,
        *,
        seed: str,
        media_type: str = ecr_emulator.DOCKER_MANIFEST,
    ) -> str:
        """Push a fresh image of `media_type` (a single-platform manifest or a two-platform
        index/list with its children and blobs) under `tag`; return its digest."""
        if media_type in (ecr_emulator.OCI_INDEX, ecr_emulator.DOCKER_MANIFEST_LIST):
            top, children = ecr_emulator.multi_arch(media_type, seed=seed)
            child_type = (
                ecr_emulator.OCI_MANIFEST
                if media_type == ecr_emulator.OCI_INDEX
                else ecr_emulator.DOCKER_MANIFEST
            )
            for architecture, child in children.items():
                for blob in ecr_emulator.image_blobs(architecture=architecture, seed=seed):
                    self.push_blob(repository, blob)
                self.push_manifest(repository, ecr_emulator.digest_of(child), child, child_type)
            return self.push_manifest(repository, tag, top, media_type)
        if media_type == ecr_emulator.OCI_MANIFEST:
            manifest = ecr_emulator.oci_manifest(seed=seed)
        else:
            manifest = ecr_emulator.docker_manifest(seed=seed)
        for blob in ecr_emulator.image_blobs(seed=seed):
            self.push_blob(repository, blob)
        return self.push_manifest(repository, tag, manifest, media_type)

    def stop(self, within: float = 10.0) -> None:
        if self.token_server is not None:
            self.token_server.stop()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(within)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(within)

    def log(self) -> str:
        return (self.directory / "registry.log").read_text(errors="replace")

    def _call(
        self,
        method: str,
        path_or_url: str,
        repository: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        url = path_or_url if "://" in path_or_url else self.url + path_or_url
        request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
        if self.token_server is not None:
            token = self.token_server.issue(f"repository:{repository}:pull,push")
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(
                request, timeout=10, context=_client_context(self)
            ) as answer:
                answer.read()
                return answer
        except urllib.error.HTTPError as error:
            raise AssertionError(
                f"{method} {url}: HTTP {error.code}: {error.read()[:500]!r}"
            ) from None


def _client_context(registry: Registry) -> ssl.SSLContext | None:
    if registry.ca_file is None:
        return None
    return ssl.create_default_context(cafile=str(registry.ca_file))


def _answers(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/", timeout=1, context=context):
            return True
    except urllib.error.HTTPError as error:
        return error.code == 401
    except (urllib.error.URLError, OSError):
        return False


def start_registry(
    *,
    secured: bool = False,
    users: Mapping[str, str] | None = None,
    ready_within: float = 30.0,
) -> Registry:
    """Start the registry binary on a loopback port of its choosing and wait until it
    answers; `users` (secured only) are the token server's accounts."""
    if users and not secured:
        raise ValueError("users need the secured registry: its token server checks them")
    binary = require_binary()
    directory = Path(tempfile.mkdtemp(prefix="digestguard-registry-"))
    config: dict[str, Any] = {
        "version": 0.1,
        # Info: the level of the "listening on" line that names the port it bound.
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(directory / "storage")},
            "delete": {"enabled": True},
        },
        "http": {"addr": "127.0.0.1:0", "secret": uuid.uuid4().hex},
        "health": {"storagedriver": {"enabled": False}},
    }
    token_server = None
    ca_file = None
    scheme = "http"
    if secured:
        tls = self_signed(directory, "registry", (HOST, "127.0.0.1"))
        signer = self_signed(directory, "token-signer")
        token_server = TokenServer(tls, signer, users=users)
        config["http"]["tls"] = {"certificate": str(tls.cert_file), "key": str(tls.key_file)}
        config["auth"] = {
            "token": {
                "realm": token_server.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(signer.cert_file),
            }
        }
        ca_file = tls.cert_file
        scheme = "https"
    # JSON is YAML: distribution reads it as its config file.
    (directory / "config.yml").write_text(json.dumps(config))
    with (directory / "registry.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, "serve", str(directory / "config.yml")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        port = ports.announced_port(
            directory / "registry.log", r"listening on 127\.0\.0\.1:(\d+)", process, ready_within
        )
    except RuntimeError as error:
        process.kill()
        process.wait()
        if token_server is not None:
            token_server.stop()
        raise RuntimeError(f"{BINARY}: {error}") from None
    host = f"{HOST}:{port}"
    registry = Registry(
        host, f"{scheme}://{host}", process, directory, ca_file=ca_file, token_server=token_server
    )
    context = _client_context(registry)
    give_up = time.monotonic() + ready_within
    while not _answers(registry.url, context):
        if process.poll() is not None or time.monotonic() > give_up:
            registry.stop()
            raise RuntimeError(f"{BINARY} did not start on {registry.url}:\n{registry.log()}")
        time.sleep(0.05)
    return registry


@contextlib.contextmanager
def running_registry(
    *, secured: bool = False, users: Mapping[str, str] | None = None
) -> Iterator[Registry]:
    registry = start_registry(secured=secured, users=users)
    try:
        yield registry
    finally:
        registry.stop()
        shutil.rmtree(registry.directory, ignore_errors=True)
