"""The self-managed TLS lifecycle: a CA and serving certificate in a Secret of our own.

Every replica runs `SelfManagedTLS.run`, which reconciles now and then every minute:

1. read the Secret `<tls-secret-name>` in the webhook's namespace (never any other);
2. decide with `webhook.tls.certificates.renew` what it must hold (create, renew, rotate
   the CA, trim the bundle) and write it if that differs: `create` when it is absent,
   else a patch carrying the `resourceVersion` that was read. When replicas race, the
   loser gets 409 (AlreadyExists or Conflict), reads the winner's Secret and adopts it;
3. put the bundle into `caBundle` of every webhook of both webhook configurations,
   only where it differs, again with the `resourceVersion` as a precondition;
4. write `tls.crt`/`tls.key` into the TLS directory (atomically, by rename) and call
   `on_change` so the HTTPS server loads them.

A new CA enters the apiserver's bundle before any replica serves a certificate it
signed: the replica that rotates publishes the bundle, waits `settle` seconds for the
apiserver to see it, and only then writes its files; the other replicas read the new
Secret on their next round and find the bundle already published. The old CA stays
in the bundle until it expires or a day has passed (`certificates.build_bundle`).
Reconciling every minute costs three GETs and also restores a `caBundle` that a tool
re-applying the webhook configurations has removed.

RBAC this needs (the chart grants exactly this): get/patch on the one Secret and on
the two webhook configurations by `resourceNames`, and `create` on Secrets in the
namespace, which Kubernetes cannot scope by name. The chart creates the Secret empty,
so `create` is only used when it was deleted or the chart is not used.

The `kubernetes` client is blocking: `reconcile` runs in the caller's thread, and
`run` calls it through `asyncio.to_thread`, so the event loop never waits on the
apiserver.
"""

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import kubernetes

from webhook import errors
from webhook.tls import certificates

logger = logging.getLogger("digestguard.tlssecret")

CERT_FILE: Final = "tls.crt"
KEY_FILE: Final = "tls.key"

# Keys of the Secret.
SECRET_CA_CERT: Final = "ca.crt"
SECRET_CA_KEY: Final = "ca.key"
SECRET_CERT: Final = "tls.crt"
SECRET_KEY: Final = "tls.key"
SECRET_BUNDLE: Final = "ca-bundle.crt"

MANAGED_BY_LABEL: Final = {"app.kubernetes.io/managed-by": "digestguard"}

_REQUEST_TIMEOUT: Final = (5.0, 20.0)
_ATTEMPTS: Final = 5
_FIRST_RETRY: Final = 1.0
_WATCH_SECONDS: Final = 300
_KINDS: Final = ("mutating", "validating")
_MERGE_PATCH: Final = "application/merge-patch+json"
_STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"


@dataclasses.dataclass(frozen=True)
class WebhookConfigurations:
    """The names of the webhook configurations whose `caBundle` we own."""

    mutating: str
    validating: str


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class SelfManagedTLS:
    """One replica's view of the shared TLS Secret; see the module docstring."""

    def __init__(
        self,
        *,
        namespace: str,
        secret_name: str,
        service_name: str,
        webhook_configurations: WebhookConfigurations,
        tls_dir: str | os.PathLike[str],
        on_change: Callable[[], object] | None = None,
        validity: certificates.Validity = certificates.DEFAULT_VALIDITY,
        interval: float = 60.0,
        settle: float = 2.0,
        api_client: Any = None,
        clock: Callable[[], datetime.datetime] = _utc_now,
    ) -> None:
        self.namespace = namespace
        self.secret_name = secret_name
        self.service_name = service_name
        self.webhook_configurations = webhook_configurations
        self.tls_dir = Path(tls_dir)
        self.on_change = on_change
        self.validity = validity
        self.interval = interval
        self.settle = settle
        self.clock = clock
        self._api_client = api_client
        self._serving_expires_at: datetime.datetime | None = None
        self._missing_logged: set[str] = set()

    @property
    def dns_names(self) -> tuple[str, ...]:
        return certificates.service_dns_names(self.service_name, self.namespace)

    @property
    def cert_file(self) -> Path:
        return self.tls_dir / CERT_FILE

    @property
    def key_file(self) -> Path:
        return self.tls_dir / KEY_FILE

    @property
    def ready(self) -> bool:
        """Whether this replica has written a certificate that is still valid."""
        expires = self._serving_expires_at
        return expires is not None and self.clock() < expires

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile now, every `interval` seconds, and whenever a webhook configuration
        of ours is created or changed (a watch on each, by name), until `stop` is set.

        The watch brings the caBundle back within moments when the configurations are
        created after the replicas or replaced (`kubectl replace`), instead of on the
        next periodic round. A failed round is logged and retried sooner (1 s, doubling
        up to `interval`); the files already written keep being served meanwhile.
        """
        loop = asyncio.get_running_loop()
        changed_configuration = asyncio.Event()
        stopped = threading.Event()
        watchers = [
            threading.Thread(
                target=self._watch,
                args=(kind, lambda: loop.call_soon_threadsafe(changed_configuration.set), stopped),
                name=f"digestguard-watch-{kind}",
                daemon=True,
            )
            for kind in _KINDS
        ]
        for watcher in watchers:
            watcher.start()
        retry = _FIRST_RETRY
        try:
            while not stop.is_set():
                changed_configuration.clear()
                try:
                    changed = await asyncio.to_thread(self.reconcile)
                except Exception as error:
                    logger.warning(
                        "TLS reconcile failed; retrying",
                        extra={"secret": self.secret_name, "error": str(error), "retry_in": retry},
                    )
                    delay, retry = retry, min(retry * 2, self.interval)
                else:
                    delay, retry = self.interval, _FIRST_RETRY
                    if changed and self.on_change is not None:
                        self.on_change()
                await _first_of(stop, changed_configuration, within=delay)
        finally:
            stopped.set()

    def _watch(self, kind: str, changed: Callable[[], object], stopped: threading.Event) -> None:
        """Call `changed` on every event of webhook configuration `kind` (by its name)."""
        lister, name = self._configuration_calls(kind, "list")
        failures = 0
        while not stopped.is_set():
            try:
                # Each stream lists first (ADDED for what exists), so nothing written
                # between two streams is missed; RBAC allows the list by this name only.
                for event in kubernetes.watch.Watch().stream(  # type: ignore[no-untyped-call]
                    lister,
                    field_selector=f"metadata.name={name}",
                    timeout_seconds=_WATCH_SECONDS,
                    _request_timeout=(_REQUEST_TIMEOUT[0], _WATCH_SECONDS + 10),
                ):
                    failures = 0
                    if stopped.is_set():
                        return
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        changed()
            except Exception as error:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    logger.warning(
                        "cannot watch the webhook configuration; the periodic reconcile"
                        " still restores its caBundle",
                        extra={"kind": kind, "configuration": name, "error": str(error)},
                    )
                stopped.wait(min(_FIRST_RETRY * 2**failures, self.interval))

    def reconcile(self) -> bool:
        """One round (blocking): returns whether the certificate files changed."""
        for _ in range(_ATTEMPTS):
            secret = self._read_secret()
            configurations = self._read_configurations()
            renewal = certificates.renew(
                _material(secret),
                self.dns_names,
                self.clock(),
                self.validity,
                also_trusted=_published_bundles(configurations.values()),
            )
            serving = renewal.material.serving
            try:
                if renewal.changed:
                    logger.info(
                        "storing new TLS material",
                        extra={"secret": self.secret_name, "reasons": "; ".join(renewal.reasons)},
                    )
                    secret = self._store(secret, renewal.material)
                published = self._publish(configurations, renewal.material.bundle_pem)
            except errors.Conflict:
                continue
            if published and not self._secret_unchanged(secret):
                # Another replica rotated meanwhile; publish the union of both views.
                continue
            on_disk = _read(self.cert_file)
            if published and self.settle > 0 and on_disk not in (None, serving.cert_pem):
                time.sleep(self.settle)
            return self._write_files(serving)
        raise errors.ReconcileError(
            f"Secret {self.namespace}/{self.secret_name} kept changing; gave up after "
            f"{_ATTEMPTS} attempts"
        )

    # -- the Secret ----------------------------------------------------------

    def _core(self) -> Any:
        return kubernetes.client.CoreV1Api(self._client())

    def _client(self) -> Any:
        if self._api_client is None:
            # Built on first use: the caller loads the kubeconfig after constructing us.
            self._api_client = kubernetes.client.ApiClient()
        return self._api_client

    def _read_secret(self) -> dict[str, Any] | None:
        try:
            response = self._core().read_namespaced_secret(
                self.secret_name,
                self.namespace,
                _preload_content=False,
                _request_timeout=_REQUEST_TIMEOUT,
            )
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            raise errors.KubernetesError(_described(error), error.status or 0) from error
        return _json(response)

    def _store(
        self, secret: dict[str, Any] | None, material: certificates.Material
    ) -> dict[str, Any]:
        data = {key: base64.b64encode(value).decode() for key, value in _entries(material).items()}
        try:
            if secret is None:
                body = {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {
                        "name": self.secret_name,
                        "namespace": self.namespace,
                        "labels": MANAGED_BY_LABEL,
                    },
                    "type": "Opaque",
                    "data": data,
                }
                response = self._core().create_namespaced_secret(
                    self.namespace, body, _preload_content=False, _request_timeout=_REQUEST_TIMEOUT
                )
            else:
                patch = {
                    "metadata": {"resourceVersion": secret["metadata"]["resourceVersion"]},
                    "data": data,
                }
                response = self._core().patch_namespaced_secret(
                    self.secret_name,
                    self.namespace,
                    patch,
                    _content_type=_MERGE_PATCH,
                    _preload_content=False,
                    _request_timeout=_REQUEST_TIMEOUT,
                )
        except kubernetes.client.ApiException as error:
            if error.status == 409:
                logger.info(
                    "another replica wrote the TLS Secret first; adopting it",
                    extra={"secret": self.secret_name},
                )
                raise errors.Conflict(_described(error), 409) from None
            raise errors.KubernetesError(_described(error), error.status or 0) from error
        return _json(response)

    def _secret_unchanged(self, secret: dict[str, Any] | None) -> bool:
        latest = self._read_secret()
        return _resource_version(latest) == _resource_version(secret)

    # -- the webhook configurations -----------------------------------------

    def _admission(self) -> Any:
        return kubernetes.client.AdmissionregistrationV1Api(self._client())

    def _configuration_calls(self, kind: str, verb: str) -> tuple[Callable[..., Any], str]:
        """The API call `verb` (read, list, patch) for webhook configuration `kind`
        (mutating or validating), and that configuration's name."""
        name = getattr(self.webhook_configurations, kind)
        call = getattr(self._admission(), f"{verb}_{kind}_webhook_configuration")
        return call, name

    def _read_configurations(self) -> dict[str, dict[str, Any] | None]:
        readers = {kind: self._configuration_calls(kind, "read") for kind in _KINDS}
        found: dict[str, dict[str, Any] | None] = {}
        for kind, (read, name) in readers.items():
            try:
                found[kind] = _json(
                    read(name, _preload_content=False, _request_timeout=_REQUEST_TIMEOUT)
                )
                self._missing_logged.discard(kind)
            except kubernetes.client.ApiException as error:
                if error.status != 404:
                    raise errors.KubernetesError(_described(error), error.status or 0) from error
                found[kind] = None
                if kind not in self._missing_logged:
                    self._missing_logged.add(kind)
                    logger.warning(
                        "webhook configuration not found; its caBundle cannot be set",
                        extra={"kind": kind, "configuration": name},
                    )
        return found

    def _publish(self, configurations: dict[str, dict[str, Any] | None], bundle: bytes) -> bool:
        """Patch `caBundle` into every webhook whose value differs; whether any did."""
        api = self._admission()
        patchers = {
            "mutating": api.patch_mutating_webhook_configuration,
            "validating": api.patch_validating_webhook_configuration,
        }
        wanted = base64.b64encode(bundle).decode()
        patched = False
        for kind, configuration in configurations.items():
            if configuration is None:
                continue
            webhooks = configuration.get("webhooks") or []
            if all(_ca_bundle(webhook) == wanted for webhook in webhooks):
                continue
            metadata = configuration["metadata"]
            # Listed in their current order: a strategic merge patch reorders the list.
            patch = {
                "metadata": {"resourceVersion": metadata["resourceVersion"]},
                "webhooks": [
                    {"name": webhook["name"], "clientConfig": {"caBundle": wanted}}
                    for webhook in webhooks
                ],
            }
            try:
                patchers[kind](
                    metadata["name"],
                    patch,
                    _content_type=_STRATEGIC_MERGE_PATCH,
                    _preload_content=False,
                    _request_timeout=_REQUEST_TIMEOUT,
                )
            except kubernetes.client.ApiException as error:
                if error.status == 409:
                    raise errors.Conflict(_described(error), 409) from None
                raise errors.KubernetesError(_described(error), error.status or 0) from error
            logger.info(
                "caBundle published",
                extra={"kind": kind, "configuration": metadata["name"], "webhooks": len(webhooks)},
            )
            patched = True
        return patched

    # -- the files -------------------------------------------------------------

    def _write_files(self, serving: certificates.KeyPair) -> bool:
        self.tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._serving_expires_at = certificates.expires_at(serving.cert_pem)
        if _read(self.cert_file) == serving.cert_pem and _read(self.key_file) == serving.key_pem:
            return False
        # The key first: a server that reloads in between sees a mismatched pair and
        # keeps the old one, never a new certificate with the old key.
        _replace(self.key_file, serving.key_pem, mode=0o600)
        _replace(self.cert_file, serving.cert_pem, mode=0o644)
        logger.info(
            "serving certificate written",
            extra={
                "dir": str(self.tls_dir),
                "expires_at": self._serving_expires_at.isoformat(),
            },
        )
        return True


def _entries(material: certificates.Material) -> dict[str, bytes]:
    return {
        SECRET_CA_CERT: material.ca.cert_pem,
        SECRET_CA_KEY: material.ca.key_pem,
        SECRET_CERT: material.serving.cert_pem,
        SECRET_KEY: material.serving.key_pem,
        SECRET_BUNDLE: material.bundle_pem,
    }


def _material(secret: dict[str, Any] | None) -> certificates.Material:
    """What a Secret holds; anything missing or not base64 reads as empty."""
    if secret is None:
        return certificates.Material.empty()
    data = secret.get("data") or {}

    def entry(key: str) -> bytes:
        try:
            return base64.b64decode(data.get(key) or "", validate=True)
        except (binascii.Error, ValueError):
            return b""

    return certificates.Material(
        ca=certificates.KeyPair(entry(SECRET_CA_CERT), entry(SECRET_CA_KEY)),
        serving=certificates.KeyPair(entry(SECRET_CERT), entry(SECRET_KEY)),
        bundle_pem=entry(SECRET_BUNDLE),
    )


def _published_bundles(configurations: Iterable[dict[str, Any] | None]) -> list[bytes]:
    bundles = []
    for configuration in configurations:
        for webhook in (configuration or {}).get("webhooks") or []:
            with contextlib.suppress(binascii.Error, ValueError):
                bundles.append(base64.b64decode(_ca_bundle(webhook), validate=True))
    return bundles


def _ca_bundle(webhook: dict[str, Any]) -> str:
    return str((webhook.get("clientConfig") or {}).get("caBundle") or "")


def _resource_version(obj: dict[str, Any] | None) -> str | None:
    return None if obj is None else str(obj["metadata"]["resourceVersion"])


def _json(response: Any) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(response.data)
    return decoded


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _replace(path: Path, content: bytes, *, mode: int) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _described(error: kubernetes.client.ApiException) -> str:
    """One line for an apiserver error: the status and the reason, never the body whole."""
    return f"Kubernetes API: HTTP {error.status} {error.reason}".rstrip()


async def _first_of(*events: asyncio.Event, within: float) -> None:
    """Return when any of `events` is set, or after `within` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
