"""The webhook's registry credentials: the pull Secrets it was named, read and followed.

`--registry-pull-secrets` names `kubernetes.io/dockerconfigjson` Secrets of the webhook's
own namespace (what `kubectl create secret docker-registry` makes). `PullSecrets` reads
exactly those, with a GET by name (the chart grants `get` on those names and nothing
else), now and then every `interval` seconds. A Secret whose `resourceVersion` changed
is parsed again (`dockerconfig.parse` of its `.dockerconfigjson`), and the credentials of
all of them, merged, are handed to the OCI client (`OciClient.use_credentials`): a
rotated password is used within one interval, without a restart. Where two Secrets name
the same registry, the one listed first wins.

Polling rather than watching: a watch limited by `resourceNames` needs `list` and
`watch` too and a stream per Secret; a GET of a few Secrets each interval costs the
apiserver less than one pod creation, and a change is seen within the interval anyway.

What goes wrong is logged once when it starts, naming the Secret and what is wrong,
never what it holds:

- the Secret does not exist, or is not a dockerconfigjson Secret that parses: its
  credentials are dropped (those registries are read anonymously meanwhile);
- the apiserver refuses (403: the RBAC does not name it) or does not answer: the
  credentials last read are kept.

Neither affects readiness: a registry that needs the missing credentials is "could not
tell" for its images, which their policies' `onResolveError` decides.
"""

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final

import kubernetes

from webhook import errors
from webhook.registries.oci import dockerconfig

logger = logging.getLogger("digestguard.pullsecrets")

SECRET_TYPE: Final = "kubernetes.io/dockerconfigjson"
DATA_KEY: Final = ".dockerconfigjson"
DEFAULT_INTERVAL: Final = 30.0
"""Seconds between two reads of the pull Secrets (`--registry-pull-secrets-interval`)."""

_REQUEST_TIMEOUT: Final = (2.0, 5.0)


def source_name(namespace: str, name: str) -> str:
    """How a pull Secret is named in messages about the credentials it gave."""
    return f"the pull Secret {namespace}/{name}"


def credentials_of(
    secret: Mapping[str, Any], namespace: str, name: str
) -> dict[str, dockerconfig.Credential]:
    """The credentials a dockerconfigjson Secret's body holds, by canonical registry host.

    Raises `errors.ConfigurationError` naming the Secret and what is wrong with it, never
    what it holds.
    """
    where = f"Secret {namespace}/{name}"
    kind = secret.get("type")
    if kind != SECRET_TYPE:
        raise errors.ConfigurationError(
            f"{where} is of type {str(kind)[:80]!r}, not {SECRET_TYPE}"
            " (kubectl create secret docker-registry makes one)"
        )
    data = secret.get("data")
    encoded = data.get(DATA_KEY) if isinstance(data, dict) else None
    if not isinstance(encoded, str) or not encoded:
        raise errors.ConfigurationError(f"{where} has no {DATA_KEY}")
    try:
        text = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise errors.ConfigurationError(f"{where}: {DATA_KEY} is not base64 of UTF-8") from None
    return dockerconfig.parse(text, f"{where} {DATA_KEY}", named=source_name(namespace, name))


def merged(
    credentials: Sequence[Mapping[str, dockerconfig.Credential]],
) -> dict[str, dockerconfig.Credential]:
    """One credential per registry: the first of `credentials` that has one."""
    found: dict[str, dockerconfig.Credential] = {}
    for each in credentials:
        for registry, credential in each.items():
            found.setdefault(registry, credential)
    return found


@dataclasses.dataclass(frozen=True)
class _Read:
    """What one Secret gave on its last read."""

    resource_version: str | None
    credentials: Mapping[str, dockerconfig.Credential]
    problem: str | None = None


_NOT_READ: Final = _Read(None, {})


class PullSecrets:
    """The pull Secrets `names` of `namespace`, read every `interval` seconds; their merged
    credentials go to `use` whenever they change (see the module docstring)."""

    def __init__(
        self,
        *,
        namespace: str,
        names: Sequence[str],
        use: Callable[[dockerconfig.Credentials], Collection[str]],
        interval: float = DEFAULT_INTERVAL,
        api_client: Any = None,
    ) -> None:
        self.namespace = namespace
        self.names = tuple(dict.fromkeys(names))
        self.interval = interval
        self._use = use
        self._api_client = api_client
        self._reads: dict[str, _Read] = dict.fromkeys(self.names, _NOT_READ)
        self._unreadable: set[str] = set()

    @property
    def registries(self) -> frozenset[str]:
        """The registries the Secrets last read give credentials for."""
        return frozenset(merged([self._reads[name].credentials for name in self.names]))

    async def run(self, stop: asyncio.Event) -> None:
        """Read the Secrets every `interval` seconds (the first read is the caller's:
        `refresh`) until `stop` is set; a failed round is logged, never raised."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            if stop.is_set():
                return
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as error:
                logger.warning(
                    "cannot read the registry pull secrets", extra={"error": type(error).__name__}
                )

    def refresh(self) -> None:
        """Read every Secret once (blocking) and hand over the credentials if they changed."""
        for name in self.names:
            self._reads[name] = self._read(name, self._reads[name])
        changed = self._use(merged([self._reads[name].credentials for name in self.names]))
        if changed:
            logger.info(
                "registry credentials changed",
                extra={"registries": ", ".join(sorted(changed))},
            )

    def _read(self, name: str, last: _Read) -> _Read:
        api = kubernetes.client.CoreV1Api(self._client())
        try:
            # Not preloaded: the client logs a preloaded body at debug level.
            response: Any = api.read_namespaced_secret(
                name, self.namespace, _preload_content=False, _request_timeout=_REQUEST_TIMEOUT
            )
            secret = json.loads(response.data)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return self._now(name, last, _Read(None, {}, "the Secret does not exist"))
            return self._unread(name, last, f"HTTP {error.status} {error.reason}".rstrip())
        except Exception as error:
            # Never the error's text: a client error could quote what it was reading.
            return self._unread(name, last, type(error).__name__)
        self._unreadable.discard(name)
        if not isinstance(secret, dict):
            return self._now(name, last, _Read(None, {}, "the apiserver sent no object"))
        metadata = secret.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        version = str(version) if version is not None else None
        if version is not None and version == last.resource_version:
            return last
        try:
            credentials = credentials_of(secret, self.namespace, name)
        except errors.ConfigurationError as problem:
            return self._now(name, last, _Read(version, {}, str(problem)))
        return self._now(name, last, _Read(version, credentials))

    def _now(self, name: str, last: _Read, read: _Read) -> _Read:
        """`read`, logged when it says something new about Secret `name`."""
        fields = {"secret": f"{self.namespace}/{name}"}
        if read.problem is not None:
            if read.problem != last.problem:
                logger.warning(
                    "registry pull secret not used; its registries are read anonymously",
                    extra={**fields, "problem": read.problem},
                )
        elif read.resource_version != last.resource_version:
            logger.info(
                "registry pull secret loaded",
                extra={
                    **fields,
                    "registries": ", ".join(sorted(read.credentials)) or "(none)",
                    "resource_version": read.resource_version,
                },
            )
        return read

    def _unread(self, name: str, last: _Read, problem: str) -> _Read:
        """The apiserver did not give the Secret: keep what it gave last."""
        if name not in self._unreadable:
            self._unreadable.add(name)
            logger.warning(
                "cannot read the registry pull secret; keeping what it gave last",
                extra={"secret": f"{self.namespace}/{name}", "problem": problem},
            )
        return last

    def _client(self) -> Any:
        if self._api_client is None:
            # Built on first use: the caller loads the kubeconfig after constructing us.
            self._api_client = kubernetes.client.ApiClient()
        return self._api_client
