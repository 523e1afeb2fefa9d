"""`digestguard resolve` pins ECR images by hand through boto3 over HTTP to the moto ECR server.

Images of other registries: `test_oci_registry.py`.
"""

import os
import subprocess
import sys
import uuid

from tests.support import ecr_emulator

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def resolve(moto_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | ecr_emulator.FAKE_CREDENTIALS | {"AWS_DEFAULT_REGION": ecr_emulator.REGION}
    return subprocess.run(
        [sys.executable, "-m", "webhook", "resolve", "--ecr-endpoint-url", moto_url, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def a_repository(moto_url: str) -> tuple[str, str]:
    """A fresh repository holding tag v1; returns (image without tag, digest)."""
    name = f"cli/{uuid.uuid4().hex[:8]}"
    client = ecr_emulator.ecr_client(moto_url)
    digest = ecr_emulator.seed_image(
        client, name, "v1", ecr_emulator.docker_manifest(seed=name), DOCKER_V2
    )
    return f"{ecr_emulator.registry_host()}/{name}", digest


def test_resolve_prints_the_tag_pinned_to_its_digest(moto_server: ecr_emulator.MotoServer) -> None:
    image, digest = a_repository(moto_server.url)
    result = resolve(moto_server.url, f"{image}:v1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{image}:v1@{digest}"


def test_resolve_can_drop_the_tag(moto_server: ecr_emulator.MotoServer) -> None:
    image, digest = a_repository(moto_server.url)
    result = resolve(moto_server.url, "--drop-tag", f"{image}:v1")
    assert result.stdout.strip() == f"{image}@{digest}"


def test_resolve_exits_1_and_names_a_missing_tag(moto_server: ecr_emulator.MotoServer) -> None:
    image, _ = a_repository(moto_server.url)
    result = resolve(moto_server.url, f"{image}:v1", f"{image}:nope")
    assert result.returncode == 1
    assert f"{image}:nope: not found" in result.stderr
    assert result.stdout.startswith(f"{image}:v1@sha256:")


def test_resolve_refuses_an_insecure_registry_that_is_not_a_host(
    moto_server: ecr_emulator.MotoServer,
) -> None:
    result = resolve(moto_server.url, "--insecure-registries", "http://localhost:5000", "app:v1")
    assert result.returncode == 64
    assert "is not a host[:port]" in result.stderr


def test_resolve_refuses_a_malformed_reference(moto_server: ecr_emulator.MotoServer) -> None:
    result = resolve(moto_server.url, f"{ecr_emulator.registry_host()}/App:v1")
    assert result.returncode == 64
    assert "lowercase" in result.stderr
