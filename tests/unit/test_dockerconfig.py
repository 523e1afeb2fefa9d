"""Credentials read from a Docker client config, as `docker login` writes it."""

import base64
import json
import pathlib

import pytest

from webhook import errors
from webhook.registries.oci import dockerconfig


def auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def config(**auths: object) -> str:
    return json.dumps({"auths": auths})


def test_an_auth_entry_is_user_and_password_in_base64() -> None:
    found = dockerconfig.parse(config(**{"ghcr.io": {"auth": auth("me", "pa:ss")}}), "c")
    assert found == {"ghcr.io": dockerconfig.Credential("me", "pa:ss")}


def test_username_and_password_fields_are_read_too() -> None:
    found = dockerconfig.parse(
        config(**{"quay.io": {"username": "bot", "password": "tok"}}), "config.json"
    )
    assert found == {"quay.io": dockerconfig.Credential("bot", "tok")}


@pytest.mark.parametrize(
    "key", ["https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"]
)
def test_every_spelling_of_docker_hub_is_docker_io(key: str) -> None:
    assert set(dockerconfig.parse(config(**{key: {"auth": auth("a", "b")}}), "c")) == {"docker.io"}


def test_hosts_are_canonical_as_image_references_are() -> None:
    found = dockerconfig.parse(
        config(**{"https://Registry.Example.com:443/v2/": {"auth": auth("a", "b")}}), "c"
    )
    assert set(found) == {"registry.example.com"}


def test_entries_without_credentials_are_left_out() -> None:
    text = json.dumps({"auths": {"ghcr.io": {}}, "credsStore": "desktop"})
    assert dockerconfig.parse(text, "c") == {}


def test_a_password_is_never_in_the_repr() -> None:
    assert "s3cret" not in repr(dockerconfig.Credential("me", "s3cret"))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        (json.dumps({"auths": []}), "'auths' is not an object"),
        (config(**{"ghcr.io": {"auth": "***"}}), "auths['ghcr.io'].auth is not base64"),
        (config(**{"ghcr.io": {"auth": base64.b64encode(b"nocolon").decode()}}), "user:password"),
    ],
)
def test_a_config_that_cannot_be_read_names_the_file_and_entry(text: str, words: str) -> None:
    with pytest.raises(errors.ConfigurationError, match=r"^/home/me/config\.json: ") as raised:
        dockerconfig.parse(text, "/home/me/config.json")
    assert words in str(raised.value)


def test_docker_config_names_the_folder_of_the_file(tmp_path: pathlib.Path) -> None:
    assert dockerconfig.path({"DOCKER_CONFIG": str(tmp_path)}, pathlib.Path("/h")) == (
        tmp_path / "config.json"
    )
    assert dockerconfig.path({}, pathlib.Path("/h")) == pathlib.Path("/h/.docker/config.json")


def test_a_missing_file_is_no_credentials(tmp_path: pathlib.Path) -> None:
    assert dockerconfig.load(tmp_path / "config.json") == {}
