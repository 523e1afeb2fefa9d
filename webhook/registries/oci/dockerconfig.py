"""Registry credentials from a Docker client configuration (`~/.docker/config.json`).

Only what the file itself holds: `auths` entries with `auth` (base64 of `user:password`)
or `username` and `password`. Credential helpers (`credsStore`, `credHelpers`) run
programs, and an `identitytoken` needs the OAuth2 POST flow: neither is used, and a
registry reached only through them is read anonymously.

Keys are registry hosts, spelled as `docker login` writes them (`ghcr.io`,
`https://index.docker.io/v1/`, `localhost:5000`) and folded into the canonical host
the reference parser gives (`docker.io` for Docker Hub). A password never appears in
a message, a log line or a `repr`.
"""

import base64
import binascii
import dataclasses
import json
import os
import pathlib
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

from webhook import errors
from webhook.core import references

CONFIG_FILE: Final = "config.json"
_DOCKER_HUB_KEYS: Final = frozenset(
    {"index.docker.io", "docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)


DOCKER_CONFIG_SOURCE: Final = "the Docker config"
"""How a credential read from the user's Docker config is named in messages."""


@dataclasses.dataclass(frozen=True)
class Credential:
    """A user and password for one registry; `source` names where it came from in
    messages (the Docker config, or a pull Secret), never the secret itself."""

    username: str
    password: str = dataclasses.field(repr=False)
    source: str = DOCKER_CONFIG_SOURCE


Credentials = Mapping[str, Credential]
"""Canonical registry host -> its credential."""


def path(environ: Mapping[str, str], home: pathlib.Path) -> pathlib.Path:
    """Where the Docker client reads its configuration: `$DOCKER_CONFIG/config.json`,
    else `~/.docker/config.json`."""
    folder = environ.get("DOCKER_CONFIG")
    return (pathlib.Path(folder) if folder else home / ".docker") / CONFIG_FILE


def load(file: pathlib.Path) -> dict[str, Credential]:
    """The credentials of `file`; none when it does not exist. Raises
    `ConfigurationError` naming the file and entry when it cannot be read."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise errors.ConfigurationError(f"{file}: cannot read it ({error})") from None
    return parse(text, str(file))


def parse(text: str, source: str, *, named: str = DOCKER_CONFIG_SOURCE) -> dict[str, Credential]:
    """The credentials of a config file's text (`source` names it in errors, `named` in
    the credentials' messages)."""
    try:
        document = json.loads(text) if text.strip() else {}
    except ValueError as error:
        raise errors.ConfigurationError(f"{source}: not JSON ({error})") from None
    if not isinstance(document, dict):
        raise errors.ConfigurationError(f"{source}: not a JSON object")
    auths = document.get("auths", {})
    if not isinstance(auths, dict):
        raise errors.ConfigurationError(f"{source}: 'auths' is not an object")
    found: dict[str, Credential] = {}
    for key, entry in auths.items():
        host = registry_host(str(key))
        credential = _credential(entry, f"{source}: auths[{key!r}]", named)
        if host is not None and credential is not None:
            found[host] = credential
    return found


def registry_host(key: str) -> str | None:
    """The canonical host of an `auths` key, or None for a key that names no host."""
    written = key.strip()
    if "://" in written:
        written = urllib.parse.urlsplit(written).netloc
    written = written.split("/", 1)[0]
    host = references.canonical_host(written) if written else None
    if host is None:
        return None
    return references.DOCKER_HUB if host in _DOCKER_HUB_KEYS else host


def _credential(entry: Any, where: str, named: str) -> Credential | None:
    if not isinstance(entry, dict):
        raise errors.ConfigurationError(f"{where} is not an object")
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise errors.ConfigurationError(
                f"{where}.auth is not base64 of user:password"
            ) from None
        user, colon, secret = decoded.partition(":")
        if not colon:
            raise errors.ConfigurationError(f"{where}.auth is not base64 of user:password")
        return Credential(user, secret, named)
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and username and isinstance(password, str):
        return Credential(username, password, named)
    return None


def from_environment() -> dict[str, Credential]:
    """The credentials the Docker client of this user would use."""
    return load(path(os.environ, pathlib.Path.home()))
