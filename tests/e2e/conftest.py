"""Fixtures for the end-to-end tests: the peers around the session's control plane.

The control plane itself (`control_plane`, `control_plane_assets`, `helm_binary`)
comes from `tests/conftest.py`, shared with the integration tests. Here: an API
client, the chart's CRD, an ECR emulator (moto over HTTP) with helpers to push
images, and a TLS pair for webhooks served on loopback.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support import cluster, ecr_emulator, image
from tests.support.controlplane import ControlPlane

if TYPE_CHECKING:
    from types_boto3_ecr.client import ECRClient


@dataclasses.dataclass
class Registry:
    """The moto ECR server, seen as the account and region images are pushed to."""

    url: str
    client: ECRClient
    host: str = ecr_emulator.registry_host()

    def push(
        self, repository: str, tag: str | None, *, seed: str = "", multi_arch: bool = False
    ) -> str:
        """Push a fresh image (different `seed`, different digest); return its digest."""
        seed = seed or f"{repository}:{tag}:{uuid.uuid4().hex}"
        if multi_arch:
            manifest, _ = ecr_emulator.multi_arch(ecr_emulator.OCI_INDEX, seed=seed)
            media_type = ecr_emulator.OCI_INDEX
        else:
            manifest = ecr_emulator.docker_manifest(seed=seed)
            media_type = ecr_emulator.DOCKER_MANIFEST
        return ecr_emulator.seed_image(self.client, repository, tag, manifest, media_type)

    def create_repository(self, repository: str, mutability: str = "MUTABLE") -> None:
        ecr_emulator.create_repository(self.client, repository, mutability=mutability)

    def image(self, repository: str, tag: str | None = None, digest: str | None = None) -> str:
        reference = f"{self.host}/{repository}"
        if tag:
            reference += f":{tag}"
        if digest:
            reference += f"@{digest}"
        return reference


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Iterator[Any]:
    """An API client for the control plane's admin (system:masters)."""
    with control_plane.new_api_client() as api_client:
        yield api_client


@pytest.fixture
def api(control_plane: ControlPlane) -> Iterator[Any]:
    """An admin API client of its own for one test."""
    with control_plane.new_api_client() as api_client:
        yield api_client


@pytest.fixture(scope="session")
def policy_crd(kube: Any) -> str:
    """The DigestPolicy CRD, from the chart's `crds/` file (the one source)."""
    return cluster.install_crd(kube)


@pytest.fixture(scope="session")
def ecr() -> Iterator[Registry]:
    with ecr_emulator.moto_server() as server:
        yield Registry(server.url, ecr_emulator.ecr_client(server.url))


@pytest.fixture(scope="session")
def loopback_tls(tmp_path_factory: pytest.TempPathFactory) -> cluster.LoopbackTLS:
    return cluster.loopback_tls(tmp_path_factory.mktemp("loopback-tls"))


@pytest.fixture(scope="session")
def new_webhook(
    control_plane: ControlPlane,
    helm_binary: Path,
    kube: Any,
    policy_crd: str,
    ecr: Registry,
    loopback_tls: cluster.LoopbackTLS,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., cluster.LocalWebhook]:
    """Make a `LocalWebhook` (not started): a process plus the chart's configurations
    for a release of its own; keyword arguments override `LocalWebhook`'s."""

    def make(**overrides: Any) -> cluster.LocalWebhook:
        arguments: dict[str, Any] = {
            "api": kube,
            "kubeconfig": control_plane.kubeconfig_path,
            "helm": helm_binary,
            "tls": loopback_tls,
            "release": cluster.unique("e2e"),
            "ecr_endpoint_url": ecr.url,
            "workdir": tmp_path_factory.mktemp("webhook"),
        }
        arguments.update(overrides)
        return cluster.LocalWebhook(**arguments)

    return make


@pytest.fixture
def start_webhook(new_webhook: Callable[..., cluster.LocalWebhook]) -> Iterator[Any]:
    """Start webhooks for one test: `start_webhook(**overrides)`; stopped after it."""
    started: list[cluster.LocalWebhook] = []

    def start(**overrides: Any) -> cluster.LocalWebhook:
        webhook = new_webhook(**overrides)
        started.append(webhook)
        return webhook.start()

    yield start
    for webhook in started:
        webhook.stop()


@pytest.fixture
def make_namespace(kube: Any) -> Iterator[Any]:
    """Create namespaces (deleted after the test): `make_namespace(webhook, **labels)`."""
    created: list[str] = []

    def make(webhook: cluster.LocalWebhook | None, **labels: str) -> str:
        name = cluster.unique("e2e")
        scope = webhook.scope if webhook is not None else {}
        cluster.create_namespace(kube, name, {**scope, **labels})
        created.append(name)
        return name

    yield make
    for name in created:
        cluster.delete_namespace(kube, name)


@pytest.fixture
def make_policy(kube: Any) -> Iterator[Any]:
    """Create enforced DigestPolicies (deleted after the test): `make_policy(spec)`."""
    created: list[str] = []

    def make(spec: dict[str, Any], name: str | None = None) -> str:
        name = name or cluster.unique("e2e")
        created.append(name)
        cluster.apply_policy(kube, name, spec)
        return name

    yield make
    for name in created:
        cluster.delete_policy(kube, name)


@dataclasses.dataclass(frozen=True)
class WebhookImage:
    """The image built from this checkout, and its layers unpacked into a root filesystem."""

    layout: image.Layout
    rootfs: Path


@pytest.fixture(scope="session")
def webhook_image(tmp_path_factory: pytest.TempPathFactory) -> WebhookImage:
    image.skip_unless_runnable()
    layout = image.build(tmp_path_factory.mktemp("image") / "oci")
    rootfs = image.unpack(layout, tmp_path_factory.mktemp("image-rootfs") / "rootfs")
    return WebhookImage(layout, rootfs)
