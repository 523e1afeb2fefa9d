"""ECR over real HTTP: a moto server in a subprocess on loopback, and real-looking images.

moto is not ECR (docs/architecture.md, "Testing against real peers"): it does not compute
digests from manifest bytes, so `seed_image` passes `imageDigest=sha256(manifest)`
the way a real push ends up; and it ignores `registryId` and `acceptedMediaTypes`.
For a missing digest moto reports a failure without that digest in `imageId`; the
server started here (`moto_ecr_server`) echoes the requested `imageId` as ECR does.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import boto3
import botocore.exceptions

from tests.support import ports

if TYPE_CHECKING:
    from types_boto3_ecr.client import ECRClient

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
ACCOUNT: Final = "123456789012"
"""The account id moto answers as."""
REGION: Final = "us-east-1"
FAKE_CREDENTIALS: Final = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}

OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def registry_host(account: str = ACCOUNT, region: str = REGION) -> str:
    return f"{account}.dkr.ecr.{region}.amazonaws.com"


def digest_of(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """The bytes a registry stores: sorted keys, no insignificant whitespace."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, content: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(content), "size": len(content)} | extra


def _config_blob(architecture: str, seed: str) -> bytes:
    return canonical_json(
        {
            "architecture": architecture,
            "os": "linux",
            "config": {"Cmd": ["/app"], "Env": [f"SEED={seed}"]},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(f"{seed}/diff".encode())]},
        }
    )


def _layer_blobs(architecture: str, seed: str) -> list[bytes]:
    return [f"{seed}/{architecture}/layer-{n}".encode() for n in (1, 2)]


def image_blobs(*, architecture: str = "amd64", seed: str = "app") -> list[bytes]:
    """The config and layer blobs that the manifests made with the same arguments refer to
    (a real registry refuses a manifest whose blobs were not pushed first)."""
    return [_config_blob(architecture, seed), *_layer_blobs(architecture, seed)]


def docker_manifest(*, architecture: str = "amd64", seed: str = "app") -> bytes:
    """A Docker image manifest v2 schema 2 for one platform (one config, two layers)."""
    config = _config_blob(architecture, seed)
    layers = [_descriptor(DOCKER_LAYER, blob) for blob in _layer_blobs(architecture, seed)]
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": _descriptor(DOCKER_CONFIG, config),
            "layers": layers,
        }
    )


def oci_manifest(*, architecture: str = "amd64", seed: str = "app") -> bytes:
    """An OCI image manifest for one platform."""
    config = _config_blob(architecture, seed)
    layers = [_descriptor(OCI_LAYER, blob) for blob in _layer_blobs(architecture, seed)]
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor(OCI_CONFIG, config),
            "layers": layers,
        }
    )


def _platform_list(media_type: str, entries: Sequence[tuple[str, bytes, str]]) -> bytes:
    manifests = [
        _descriptor(child_type, child, platform={"architecture": arch, "os": "linux"})
        for arch, child, child_type in entries
    ]
    return canonical_json({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests})


def oci_index(children: Mapping[str, bytes]) -> bytes:
    """An OCI image index referencing one OCI manifest per architecture in `children`."""
    return _platform_list(OCI_INDEX, [(a, m, OCI_MANIFEST) for a, m in children.items()])


def docker_manifest_list(children: Mapping[str, bytes]) -> bytes:
    """A Docker manifest list referencing one Docker v2 manifest per architecture."""
    return _platform_list(
        DOCKER_MANIFEST_LIST, [(a, m, DOCKER_MANIFEST) for a, m in children.items()]
    )


def multi_arch(kind: str = OCI_INDEX, *, seed: str = "app") -> tuple[bytes, dict[str, bytes]]:
    """An index (`kind` OCI_INDEX or DOCKER_MANIFEST_LIST) and its amd64/arm64 children."""
    if kind == OCI_INDEX:
        children = {a: oci_manifest(architecture=a, seed=seed) for a in ("amd64", "arm64")}
        return oci_index(children), children
    children = {a: docker_manifest(architecture=a, seed=seed) for a in ("amd64", "arm64")}
    return docker_manifest_list(children), children


def session(region: str = REGION) -> boto3.session.Session:
    """A boto3 session with fake keys: nothing ever reaches a real account."""
    return boto3.session.Session(
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=FAKE_CREDENTIALS["AWS_SESSION_TOKEN"],
        region_name=region,
    )


def ecr_client(url: str, region: str = REGION) -> "ECRClient":
    """A plain boto3 ECR client for seeding the emulator."""
    return session(region).client("ecr", endpoint_url=url)


def seed_image(
    client: "ECRClient",
    repository: str,
    tag: str | None,
    manifest: bytes,
    media_type: str,
) -> str:
    """Push `manifest` (tagged `tag`, or untagged) into `repository`; return its digest."""
    with contextlib.suppress(client.exceptions.RepositoryAlreadyExistsException):
        client.create_repository(repositoryName=repository)
    digest = digest_of(manifest)
    arguments: dict[str, Any] = {
        "repositoryName": repository,
        "imageManifest": manifest.decode(),
        "imageManifestMediaType": media_type,
        "imageDigest": digest,
    }
    if tag is not None:
        arguments["imageTag"] = tag
    client.put_image(**arguments)
    return digest


@dataclasses.dataclass
class MotoServer:
    """A moto server subprocess; `url` is its endpoint."""

    url: str
    process: "subprocess.Popen[bytes]"

    def reset(self) -> None:
        """Forget every repository and image."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self, within: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(within)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
            return True
    except (urllib.error.URLError, OSError):
        return False


def start_moto_server(*, port: int | None = None, ready_within: float = 30.0) -> MotoServer:
    """Start the moto server (`moto_ecr_server`) on 127.0.0.1 (on a port of its choosing unless
    `port` is given) and wait until it answers."""
    env = os.environ | FAKE_CREDENTIALS | {"AWS_DEFAULT_REGION": REGION}
    with tempfile.TemporaryDirectory(prefix="digestguard-moto-") as directory:
        log_path = Path(directory) / "moto.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.support.moto_ecr_server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    str(port or 0),
                ],
                env=env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            # Its start-up line names the port it bound: " * Running on http://HOST:PORT".
            port = ports.announced_port(
                log_path, r"Running on http://127\.0\.0\.1:(\d+)", process, ready_within
            )
        except RuntimeError as error:
            process.kill()
            process.wait()
            raise RuntimeError(f"moto server: {error}") from None
    url = f"http://127.0.0.1:{port}"
    server = MotoServer(url, process)
    give_up = time.monotonic() + ready_within
    while not _answers(url):
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode} before answering")
        if time.monotonic() > give_up:
            server.stop()
            raise RuntimeError(f"moto server did not answer on {url} within {ready_within}s")
        time.sleep(0.1)
    return server


@contextlib.contextmanager
def moto_server() -> Iterator[MotoServer]:
    server = start_moto_server()
    try:
        yield server
    finally:
        server.stop()


def create_repository(
    client: "ECRClient",
    repository: str,
    *,
    mutability: str = "MUTABLE",
    exclusions: Sequence[str] = (),
) -> None:
    """Create `repository` with a tag mutability setting (and wildcard exclusion filters)."""
    arguments: dict[str, Any] = {"repositoryName": repository, "imageTagMutability": mutability}
    if exclusions:
        arguments["imageTagMutabilityExclusionFilters"] = [
            {"filterType": "WILDCARD", "filter": pattern} for pattern in exclusions
        ]
    try:
        client.create_repository(**arguments)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "RepositoryAlreadyExistsException":
            raise
