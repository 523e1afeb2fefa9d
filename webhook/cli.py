"""`digestguard serve` runs the webhook; `digestguard resolve IMAGE...` pins images by hand.

Every `serve` flag has an environment variable: `--cache-ttl` is `DIGESTGUARD_CACHE_TTL`.
"""

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

from webhook import __version__, errors, logs
from webhook.core import durations, outcomes, references
from webhook.registries import ecr, oci, protocol, resolver, routing
from webhook.serving import admission, kubeapi, server
from webhook.tls import secret

logger = logging.getLogger("digestguard.cli")

ENV_PREFIX: Final = "DIGESTGUARD_"
EXIT_MISSING: Final = 1
EXIT_UNKNOWN: Final = 2
EXIT_USAGE: Final = 64
# The names of a kubernetes.io/tls Secret's keys, used for the files too.
SELF_MANAGED_CERT_FILE: Final = "tls.crt"
SELF_MANAGED_KEY_FILE: Final = "tls.key"


@dataclasses.dataclass(frozen=True)
class Flag:
    name: str
    default: str
    help: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


SERVE_FLAGS: Final = (
    Flag("address", "0.0.0.0", "address to listen on for admission reviews"),
    Flag("port", "8443", "HTTPS port for admission reviews"),
    Flag("health-port", "8080", "plain HTTP port for /healthz, /readyz and /metrics (0: off)"),
    Flag("namespace", "", "the webhook's own namespace, never admitted (default: $POD_NAMESPACE)"),
    Flag("tls-mode", "self-managed", "self-managed (own CA in a Secret) or files"),
    Flag("tls-cert-file", "", "serving certificate (PEM) for --tls-mode files; reloaded on change"),
    Flag("tls-key-file", "", "private key (PEM) for --tls-mode files; reloaded on change"),
    Flag(
        "tls-secret-name", "digestguard-tls", "Secret holding the self-managed CA and certificate"
    ),
    Flag("service-name", "digestguard", "Service name the self-managed certificate is issued for"),
    Flag("mutating-webhook-configuration", "digestguard", "gets the self-managed caBundle"),
    Flag("validating-webhook-configuration", "digestguard", "gets the self-managed caBundle"),
    Flag("tls-dir", "/tmp/tls", "where self-managed certificate files are written"),
    Flag("resolve-deadline", "5s", "time budget for all registry lookups of one admission"),
    Flag("cache-ttl", "60s", "how long a resolved tag is trusted without asking again"),
    Flag("negative-cache-ttl", "5s", "how long 'image not found' is remembered"),
    Flag("mutability-cache-ttl", "10m", "how long a repository's tag mutability is remembered"),
    Flag(
        "cache-max-entries",
        "100000",
        "resolved tags kept in memory (least recently used go); 0: no cache and no shared"
        " registry calls, one request per image (a benchmark baseline, not for production)",
    ),
    Flag("registry-workers", "16", "threads making registry calls"),
    Flag("ecr-endpoint-url", "", "ECR API endpoint override (testing only)"),
    Flag(
        "insecure-registries",
        "",
        "comma-separated host[:port] of OCI registries reached over plain HTTP, without TLS",
    ),
    Flag("registry-ca-file", "", "PEM CA bundle trusted for OCI registries besides the system's"),
    Flag("max-body-bytes", str(16 * 1024 * 1024), "largest AdmissionReview accepted"),
    Flag("shutdown-delay", "3s", "how long to stay up, not ready, after SIGTERM before draining"),
    Flag("log-level", "info", "debug, info, warning or error"),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    try:
        result: int = options.run(options)
    except errors.ConfigurationError as error:
        print(f"digestguard: {error}", file=sys.stderr)
        return EXIT_USAGE
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digestguard", description=__doc__)
    parser.add_argument("--version", action="version", version=f"digestguard {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the admission webhook",
        description="Run the admission webhook. Each flag can also be set by its env var.",
    )
    for flag in SERVE_FLAGS:
        serve.add_argument(
            f"--{flag.name}",
            default=os.environ.get(flag.env, flag.default),
            help=f"{flag.help} [env {flag.env}, default {flag.default!r}]",
        )
    serve.set_defaults(run=_serve)

    resolve = commands.add_parser(
        "resolve",
        help="print images pinned to their digests",
        description="Resolve image references to digests (ECR private registries with "
        "BatchGetImage, any other registry with the OCI distribution API) and print them "
        "pinned. Exit 1 if an image does not exist, 2 if the registry could not tell.",
    )
    resolve.add_argument("images", nargs="+", metavar="IMAGE")
    resolve.add_argument("--drop-tag", action="store_true", help="print repo@sha256:… only")
    for name in ("ecr-endpoint-url", "insecure-registries", "registry-ca-file"):
        flag = next(f for f in SERVE_FLAGS if f.name == name)
        resolve.add_argument(
            f"--{flag.name}",
            default=os.environ.get(flag.env, flag.default),
            help=f"{flag.help} [env {flag.env}]",
        )
    resolve.add_argument("--timeout", default="10s", help="time budget for all lookups")
    resolve.set_defaults(run=_resolve)
    return parser


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    address: str
    port: int
    health_port: int
    namespace: str
    tls_mode: str
    tls_cert_file: str
    tls_key_file: str
    resolve_deadline: float
    cache_ttl: float
    negative_cache_ttl: float
    mutability_cache_ttl: float
    cache_max_entries: int
    registry_workers: int
    max_body_bytes: int
    shutdown_delay: float
    insecure_registries: tuple[str, ...] = ()
    registry_ca_file: str = ""


def serve_config(options: argparse.Namespace) -> ServeConfig:
    """Check the serve flags together, or raise `ConfigurationError` naming the flag."""
    namespace = options.namespace or os.environ.get("POD_NAMESPACE", "")
    if not namespace:
        raise errors.ConfigurationError("--namespace (or POD_NAMESPACE) is required")
    if options.tls_mode not in ("self-managed", "files"):
        raise errors.ConfigurationError("--tls-mode must be 'self-managed' or 'files'")
    if options.tls_mode == "files" and not (options.tls_cert_file and options.tls_key_file):
        raise errors.ConfigurationError("--tls-mode files needs --tls-cert-file and --tls-key-file")
    cert, key = options.tls_cert_file, options.tls_key_file
    if options.tls_mode == "self-managed":
        cert = os.path.join(options.tls_dir, SELF_MANAGED_CERT_FILE)
        key = os.path.join(options.tls_dir, SELF_MANAGED_KEY_FILE)
    config = ServeConfig(
        address=options.address,
        port=_integer(options.port, "port"),
        health_port=_integer(options.health_port, "health-port"),
        namespace=namespace,
        tls_mode=options.tls_mode,
        tls_cert_file=cert,
        tls_key_file=key,
        resolve_deadline=_seconds(options.resolve_deadline, "resolve-deadline"),
        cache_ttl=_seconds(options.cache_ttl, "cache-ttl"),
        negative_cache_ttl=_seconds(options.negative_cache_ttl, "negative-cache-ttl"),
        mutability_cache_ttl=_seconds(options.mutability_cache_ttl, "mutability-cache-ttl"),
        cache_max_entries=_integer(options.cache_max_entries, "cache-max-entries"),
        registry_workers=_integer(options.registry_workers, "registry-workers"),
        max_body_bytes=_integer(options.max_body_bytes, "max-body-bytes"),
        shutdown_delay=_seconds(options.shutdown_delay, "shutdown-delay"),
        insecure_registries=_hosts(options.insecure_registries),
        registry_ca_file=options.registry_ca_file,
    )
    if config.resolve_deadline <= 0:
        raise errors.ConfigurationError("--resolve-deadline must be above zero")
    if config.registry_workers < 1:
        raise errors.ConfigurationError("--registry-workers must be >= 1")
    if config.cache_max_entries < 0:
        raise errors.ConfigurationError("--cache-max-entries must be >= 0")
    return config


def _serve(options: argparse.Namespace) -> int:
    logs.configure(options.log_level)
    config = serve_config(options)
    asyncio.run(_serve_async(options, config))
    return 0


async def _serve_async(options: argparse.Namespace, config: ServeConfig) -> None:
    # First: a bad --insecure-registries or --registry-ca-file stops the start at once.
    oci_client = oci.OciClient(
        insecure_registries=config.insecure_registries,
        ca_file=config.registry_ca_file or None,
        max_idle_connections=max(32, config.registry_workers),
    )
    kubeapi.load_configuration()
    if not await kubeapi.policy_crd_installed():
        raise errors.ConfigurationError(
            "the DigestPolicy CRD (digestpolicies.digestguard.io) is not installed; "
            "install the chart's CRD first"
        )
    the_resolver = resolver.Resolver(
        routing.RoutingClient(
            ecr.EcrClient(
                endpoint_url=options.ecr_endpoint_url or None,
                max_pool_connections=max(32, config.registry_workers),
            ),
            oci_client,
        ),
        ttl=config.cache_ttl,
        negative_ttl=config.negative_cache_ttl,
        mutability_ttl=config.mutability_cache_ttl,
        max_entries=config.cache_max_entries,
        workers=config.registry_workers,
    )
    the_admission = admission.Admission(
        resolver=the_resolver,
        own_namespace=config.namespace,
        resolve_deadline=config.resolve_deadline,
        read_namespace_labels=kubeapi.namespace_labels,
    )
    admission_server = server.AdmissionServer(
        address=config.address,
        port=config.port,
        certfile=config.tls_cert_file,
        keyfile=config.tls_key_file,
        # Answer before the apiserver gives up: the deadline plus a little for the rest.
        answer_within=config.resolve_deadline + 1.0,
        max_body_bytes=config.max_body_bytes,
    )
    tls: secret.SelfManagedTLS | None = None
    if config.tls_mode == "self-managed":
        tls = secret.SelfManagedTLS(
            namespace=config.namespace,
            secret_name=options.tls_secret_name,
            service_name=options.service_name,
            webhook_configurations=secret.WebhookConfigurations(
                mutating=options.mutating_webhook_configuration,
                validating=options.validating_webhook_configuration,
            ),
            tls_dir=options.tls_dir,
            on_change=admission_server.reload_if_changed,
        )
    stop = asyncio.Event()
    draining = asyncio.Event()

    def readiness() -> list[str]:
        waiting = []
        if draining.is_set():
            waiting.append("shutting down")
        if not the_admission.indexes_loaded.is_set():
            waiting.append("DigestPolicies and namespaces are not indexed yet")
        if not admission_server.listening.is_set():
            waiting.append("the TLS certificate is not loaded yet")
        return waiting

    health = server.HealthServer(
        address=config.address, port=config.health_port, readiness=readiness
    )
    if config.health_port:
        await health.start()

    async def shut_down() -> None:
        # Stop being ready first so endpoints drop this replica, then drain and stop.
        draining.set()
        logger.info("SIGTERM: not ready; draining", extra={"delay": config.shutdown_delay})
        await asyncio.sleep(config.shutdown_delay)
        stop.set()

    loop = asyncio.get_running_loop()
    shutdowns: set[asyncio.Task[None]] = set()

    def take_signals() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: shutdowns.add(loop.create_task(shut_down())))

    async def take_signals_back(started: asyncio.Event) -> None:
        # kopf replaces the handlers with its own immediate stop as it starts; ours must
        # win, or SIGTERM stops answering at once instead of after the shutdown delay.
        await started.wait()
        take_signals()

    async def freeze_start_up_objects() -> None:
        # What start-up made (kopf, the kubernetes client, botocore's models) lives as long
        # as the process: keep it out of the full garbage collections that load triggers.
        await the_admission.indexes_loaded.wait()
        await admission_server.listening.wait()
        gc.collect()
        gc.freeze()

    take_signals()
    started = asyncio.Event()
    signals_task = loop.create_task(take_signals_back(started))
    freeze_task = loop.create_task(freeze_start_up_objects())
    tls_task = loop.create_task(tls.run(stop)) if tls is not None else None
    try:
        await the_admission.run(admission_server, stop_flag=stop, ready_flag=started)
    finally:
        signals_task.cancel()
        freeze_task.cancel()
        stop.set()
        if tls_task is not None:
            tls_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tls_task
        await health.stop()
        await the_resolver.aclose()
        oci_client.close()
        logger.info("stopped")


def _resolve(options: argparse.Namespace) -> int:
    timeout = _seconds(options.timeout, "timeout")
    parsed: list[references.ImageReference] = []
    for image in options.images:
        try:
            reference = references.parse(image)
        except errors.InvalidReference as error:
            raise errors.ConfigurationError(str(error)) from None
        parsed.append(reference)
    oci_client = oci.OciClient(
        insecure_registries=_hosts(options.insecure_registries),
        ca_file=options.registry_ca_file or None,
    )
    client = routing.RoutingClient(
        ecr.EcrClient(endpoint_url=options.ecr_endpoint_url or None), oci_client
    )
    try:
        results = asyncio.run(_lookup(parsed, client, timeout))
    finally:
        oci_client.close()
    status = 0
    for reference in parsed:
        outcome = results[outcomes.existence_query(reference)]
        if isinstance(outcome, outcomes.Found):
            print(reference.pinned(outcome.digest, keep_tag=not options.drop_tag))
            continue
        if isinstance(outcome, outcomes.Missing):
            status = max(status, EXIT_MISSING)
            print(
                f"{reference.original}: not found ({outcome.code}: {outcome.message})",
                file=sys.stderr,
            )
        else:
            status = EXIT_UNKNOWN
            print(f"{reference.original}: {outcome.message}", file=sys.stderr)
    return status


async def _lookup(
    parsed: list[references.ImageReference], client: protocol.RegistryClient, budget: float
) -> dict[outcomes.Query, outcomes.Outcome]:
    the_resolver = resolver.Resolver(client)
    try:
        queries = collections.OrderedDict((outcomes.existence_query(r), 0.0) for r in parsed)
        return await the_resolver.resolve(queries, deadline=time.monotonic() + budget)
    finally:
        await the_resolver.aclose()


def _seconds(text: str, flag: str) -> float:
    try:
        return durations.parse_seconds(text)
    except errors.InvalidDuration as error:
        raise errors.ConfigurationError(f"--{flag}: {error}") from None


def _hosts(text: str) -> tuple[str, ...]:
    """The entries of a comma-separated host[:port] list, empty ones left out."""
    return tuple(entry.strip() for entry in text.split(",") if entry.strip())


def _integer(text: Any, flag: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise errors.ConfigurationError(f"--{flag}: {text!r} is not a whole number") from None


if __name__ == "__main__":
    sys.exit(main())
