"""A pod's own pull secrets (opt-in, `--pod-pull-secrets`): the credentials the kubelet
would pull its images with.

The kubelet pulls with the Secrets of the pod's `imagePullSecrets`; the ServiceAccount
admission plugin fills that list from the pod's ServiceAccount when the pod names none.
So the Secrets used are the pod's list, or else its ServiceAccount's
(`spec.serviceAccountName`, `default` when unset) — each read by name **in the pod's own
namespace only**: a pod naming a Secret of another namespace finds nothing. A registry's
credential is the first of those Secrets that has one for it.

Each Secret and ServiceAccount is read with a GET (the chart grants `get` on secrets and
serviceaccounts, cluster-wide, only when the option is on), kept `refresh` seconds, and a
Secret is parsed again only when its `resourceVersion` changed.

A credential reaches the resolver as a *scope*, `namespace/name@resourceVersion`
(`outcomes.Query.scope`): the resolver keys its cache, its lookups in flight and its
failures by it, and the OCI client its tokens, so a digest resolved with one namespace's
Secret is never served to a pod that lacks it, and a rotated Secret (a new
`resourceVersion`) starts afresh. Queries of a registry the pod has no credential for
keep the empty scope (anonymous, or the webhook's own `--registry-pull-secrets`).
"""

import asyncio
import collections
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import kubernetes

from webhook import errors
from webhook.registries.oci import dockerconfig
from webhook.serving import pullsecrets

logger = logging.getLogger("digestguard.podsecrets")

DEFAULT_REFRESH: Final = 10.0
"""Seconds a Secret or ServiceAccount read is used before it is read again."""
MAX_CACHED: Final = 10_000
_REQUEST_TIMEOUT: Final = (1.0, 2.0)
DEFAULT_SERVICE_ACCOUNT: Final = "default"


@dataclasses.dataclass(frozen=True)
class Scoped:
    """The credential of one registry for one pod, and the scope that names it."""

    scope: str
    credential: dockerconfig.Credential


@dataclasses.dataclass(frozen=True)
class PodCredentials:
    """What a pod's pull Secrets give: a credential per registry, and what was tried."""

    namespace: str
    by_registry: Mapping[str, Scoped]
    tried: tuple[tuple[str, str], ...]
    """(Secret name, what it gave) for every Secret tried, in order."""
    unread: bool = False
    """The Secrets could not be read within the admission's deadline."""

    def scope_of(self, registry: str) -> str:
        scoped = self.by_registry.get(registry)
        return "" if scoped is None else scoped.scope

    def tried_for(self, registry: str) -> str:
        """For a denial: which Secret names were tried for `registry`, and what each gave."""
        if self.unread:
            return f"the pod's pull Secrets in namespace {self.namespace} were not read in time"
        if not self.tried:
            return (
                "neither the pod nor its ServiceAccount names pull Secrets in namespace"
                f" {self.namespace}"
            )
        shown = []
        for name, gave in self.tried:
            scoped = self.by_registry.get(registry)
            if scoped is not None and scoped.scope.startswith(f"{self.namespace}/{name}@"):
                shown.append(f"{name} (used)")
            else:
                shown.append(f"{name} ({gave})")
        return (
            f"pull Secrets tried for {registry} in namespace {self.namespace}: {', '.join(shown)}"
        )


NONE: Final = PodCredentials("", {}, ())


@dataclasses.dataclass(frozen=True)
class _Secret:
    read_at: float
    resource_version: str | None
    credentials: Mapping[str, dockerconfig.Credential]
    problem: str | None


@dataclasses.dataclass(frozen=True)
class _Account:
    read_at: float
    secret_names: tuple[str, ...]


class PodSecrets:
    """Reads a pod's pull Secrets (see the module docstring); thread-safe reads are done
    in threads, and `use(scope, registry, credential)` registers each credential with the OCI
    client (`OciClient.use_scoped`)."""

    def __init__(
        self,
        *,
        use: Callable[[str, str, dockerconfig.Credential], object],
        refresh: float = DEFAULT_REFRESH,
        clock: Callable[[], float] = time.monotonic,
        api_client: Any = None,
    ) -> None:
        self._use = use
        self._refresh = refresh
        self._clock = clock
        self._api_client = api_client
        self._secrets: collections.OrderedDict[tuple[str, str], _Secret] = collections.OrderedDict()
        self._accounts: collections.OrderedDict[tuple[str, str], _Account] = (
            collections.OrderedDict()
        )

    async def for_pod(
        self, namespace: str, spec: Mapping[str, Any], *, within: float
    ) -> PodCredentials:
        """The credentials of the pod (or pod template) `spec` in `namespace`, read within
        `within` seconds (else none: its images are asked anonymously)."""
        try:
            return await asyncio.wait_for(self._for_pod(namespace, spec), timeout=within)
        except TimeoutError:
            logger.warning(
                "a pod's pull secrets were not read within the deadline",
                extra={"namespace": namespace},
            )
            return PodCredentials(namespace, {}, (), unread=True)

    async def _for_pod(self, namespace: str, spec: Mapping[str, Any]) -> PodCredentials:
        names = _names(spec.get("imagePullSecrets"))
        if not names:
            account = spec.get("serviceAccountName") or spec.get("serviceAccount")
            account = account if isinstance(account, str) and account else DEFAULT_SERVICE_ACCOUNT
            names = await self._account_secrets(namespace, account)
        by_registry: dict[str, Scoped] = {}
        tried: list[tuple[str, str]] = []
        for name in names:
            secret = await self._secret(namespace, name)
            if secret.problem is not None:
                tried.append((name, secret.problem))
                continue
            tried.append((name, f"credentials for {', '.join(sorted(secret.credentials))}"))
            for registry, credential in secret.credentials.items():
                if registry in by_registry:
                    continue
                scope = f"{namespace}/{name}@{secret.resource_version}"
                self._use(scope, registry, credential)
                by_registry[registry] = Scoped(scope, credential)
        return PodCredentials(namespace, by_registry, tuple(tried))

    async def _account_secrets(self, namespace: str, account: str) -> tuple[str, ...]:
        key = (namespace, account)
        cached = self._accounts.get(key)
        if cached is None or self._clock() - cached.read_at >= self._refresh:
            cached = _Account(self._clock(), await asyncio.to_thread(self._read_account, key))
            _remember(self._accounts, key, cached)
        return cached.secret_names

    async def _secret(self, namespace: str, name: str) -> _Secret:
        key = (namespace, name)
        cached = self._secrets.get(key)
        if cached is None or self._clock() - cached.read_at >= self._refresh:
            cached = await asyncio.to_thread(self._read_secret, key, cached)
            _remember(self._secrets, key, cached)
        return cached

    def _read_account(self, key: tuple[str, str]) -> tuple[str, ...]:
        namespace, name = key
        try:
            response: Any = self._core().read_namespaced_service_account(
                name, namespace, _preload_content=False, _request_timeout=_REQUEST_TIMEOUT
            )
            account = json.loads(response.data)
        except Exception as error:
            status = getattr(error, "status", None)
            if status != 404:
                logger.warning(
                    "cannot read a pod's ServiceAccount for its pull secrets",
                    extra={"namespace": namespace, "service_account": name, "status": status},
                )
            return ()
        return _names(account.get("imagePullSecrets") if isinstance(account, dict) else None)

    def _read_secret(self, key: tuple[str, str], last: _Secret | None) -> _Secret:
        namespace, name = key
        now = self._clock()
        try:
            # Not preloaded: the client logs a preloaded body at debug level.
            response: Any = self._core().read_namespaced_secret(
                name, namespace, _preload_content=False, _request_timeout=_REQUEST_TIMEOUT
            )
            secret = json.loads(response.data)
        except kubernetes.client.ApiException as error:
            problem = "does not exist" if error.status == 404 else f"HTTP {error.status}"
            return _Secret(now, None, {}, problem)
        except Exception as error:
            return _Secret(now, None, {}, f"cannot be read ({type(error).__name__})")
        metadata = secret.get("metadata") if isinstance(secret, dict) else None
        version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        version = None if version is None else str(version)
        if last is not None and last.resource_version == version and version is not None:
            return dataclasses.replace(last, read_at=now)
        try:
            credentials = pullsecrets.credentials_of(secret, namespace, name)
        except errors.ConfigurationError as problem:
            logger.warning(
                "a pod's pull secret is not usable",
                extra={"secret": f"{namespace}/{name}", "problem": str(problem)},
            )
            return _Secret(now, version, {}, "not a usable dockerconfigjson Secret")
        return _Secret(now, version, credentials, None)

    def _core(self) -> Any:
        if self._api_client is None:
            self._api_client = kubernetes.client.ApiClient()
        return kubernetes.client.CoreV1Api(self._api_client)


def _names(listed: Any) -> tuple[str, ...]:
    """The names of an `imagePullSecrets` list, in order, without repeats."""
    if not isinstance(listed, Sequence) or isinstance(listed, str):
        return ()
    found = [entry.get("name") for entry in listed if isinstance(entry, Mapping)]
    return tuple(dict.fromkeys(name for name in found if isinstance(name, str) and name))


def _remember(cache: "collections.OrderedDict[Any, Any]", key: Any, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > MAX_CACHED:
        cache.popitem(last=False)
