"""A user's Docker config credentials, sent by the command line's OCI client: to the
token endpoint of a real CNCF distribution registry (token auth, as Docker Hub, GHCR and
Harbor work), and to a registry that asks for Basic itself (the OCI stub)."""

import base64
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support import ecr_emulator, oci_registry, oci_stub
from webhook.core import outcomes, references
from webhook.registries.oci import client as oci
from webhook.registries.oci import dockerconfig

PASSWORD = "s3cret-pa55"


@pytest.fixture(scope="module")
def private_registry() -> Iterator[oci_registry.Registry]:
    with oci_registry.running_registry(secured=True, users={"alice": PASSWORD}) as registry:
        yield registry


def docker_config(folder: pathlib.Path, host: str, password: str = PASSWORD) -> pathlib.Path:
    folder.mkdir(exist_ok=True)
    encoded = base64.b64encode(f"alice:{password}".encode()).decode()
    (folder / "config.json").write_text(json.dumps({"auths": {host: {"auth": encoded}}}))
    return folder


def pin(
    registry: oci_registry.Registry, *args: str, config: pathlib.Path
) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"DOCKER_CONFIG": str(config)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "pin",
            "--registry-ca-file",
            str(registry.ca_file),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def manifest_of(registry: oci_registry.Registry, repository: str, tag: str) -> str:
    return (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n"
        f"  - name: c\n    image: {registry.image(repository, tag)}\n"
    )


def test_pin_resolves_a_private_image_with_the_docker_config_credentials(
    private_registry: oci_registry.Registry, tmp_path: pathlib.Path
) -> None:
    digest = private_registry.push_image("private/app", "1", seed="private")
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(manifest_of(private_registry, "private/app", "1"))
    config = docker_config(tmp_path / "docker", private_registry.host)
    result = pin(private_registry, str(manifest), config=config)
    assert result.returncode == 0, result.stderr
    assert f"image: {private_registry.image('private/app', '1', digest)}\n" in manifest.read_text()


def test_without_credentials_the_private_image_could_not_be_told_and_is_left_alone(
    private_registry: oci_registry.Registry, tmp_path: pathlib.Path
) -> None:
    private_registry.push_image("private/other", "1", seed="private-other")
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(manifest_of(private_registry, "private/other", "1"))
    empty = tmp_path / "empty"
    empty.mkdir()
    result = pin(private_registry, "--check", str(manifest), config=empty)
    assert result.returncode == 2
    assert private_registry.host in result.stderr
    assert manifest.read_text() == manifest_of(private_registry, "private/other", "1")


def test_refused_credentials_are_named_as_such_and_the_password_is_never_shown(
    private_registry: oci_registry.Registry, tmp_path: pathlib.Path
) -> None:
    private_registry.push_image("private/third", "1", seed="private-third")
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(manifest_of(private_registry, "private/third", "1"))
    config = docker_config(tmp_path / "wrong", private_registry.host, password="wrong-one")
    result = pin(private_registry, "--check", str(manifest), config=config)
    assert result.returncode == 2
    assert f"refused the credentials of the Docker config for {private_registry.host}" in (
        result.stderr
    )
    assert "wrong-one" not in result.stderr
    assert PASSWORD not in result.stderr


def test_a_malformed_docker_config_is_a_usage_error_naming_the_file(
    private_registry: oci_registry.Registry, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "config.json").write_text("{not json")
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(manifest_of(private_registry, "private/app", "1"))
    result = pin(private_registry, str(manifest), config=tmp_path)
    assert result.returncode == 64
    assert f"{tmp_path / 'config.json'}: not JSON" in result.stderr


def test_a_registry_that_asks_for_basic_gets_the_credentials_themselves() -> None:
    with oci_stub.OciStub() as stub:
        stub.auth = oci_stub.BASIC
        stub.basic_account = ("alice", PASSWORD)
        manifest = ecr_emulator.docker_manifest(seed="basic")
        stub.manifests[("app", "v1")] = (manifest, ecr_emulator.DOCKER_MANIFEST)
        client = oci.OciClient(
            insecure_registries=[stub.host],
            credentials={stub.host: dockerconfig.Credential("alice", PASSWORD)},
        )
        query = outcomes.Query(outcomes.Repository(stub.host, "app"), tag="v1")
        try:
            first = client.lookup(query.repository, [query], timeout=5.0)[query]
            second = client.lookup(query.repository, [query], timeout=5.0)[query]
        finally:
            client.close()
        digest = references.Digest(ecr_emulator.digest_of(manifest))
        assert first == second == outcomes.Found(digest, ecr_emulator.DOCKER_MANIFEST)
        # The second lookup sends the credentials at once: no 401 round trip.
        statuses = [r.headers.get("Authorization", "") for r in stub.received()]
        assert statuses[-1].startswith("Basic ")
