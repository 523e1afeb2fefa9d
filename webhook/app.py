"""The webhook process, built from one `Config`: the registry clients and their resolver,
the admission handlers, the HTTPS and health servers, self-managed TLS, and the signals
that drain it. `webhook.cli` turns flags into a `Config`; nothing here reads a flag.
"""

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import signal
import socket
import sys
import uuid
from typing import Final

from webhook import errors, names
from webhook.core import references, revisions
from webhook.registries import ecr, oci, resolver, routing
from webhook.registries.oci import dockerconfig
from webhook.serving import (
    admission,
    audit,
    kubeapi,
    leases,
    podsecrets,
    pullsecrets,
    rollouts,
    server,
)
from webhook.tls import secret

logger = logging.getLogger("digestguard.app")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of `digestguard serve`, checked (see `webhook.cli.serve_config`)."""

    namespace: str
    tls_mode: str
    tls_cert_file: str
    tls_key_file: str
    address: str = "0.0.0.0"
    port: int = 8443
    health_port: int = 8080
    tls_secret_name: str = "digestguard-tls"
    service_name: str = "digestguard"
    mutating_webhook_configuration: str = "digestguard"
    validating_webhook_configuration: str = "digestguard"
    tls_dir: str = "/tmp/tls"
    resolve_deadline: float = 5.0
    cache_ttl: float = 60.0
    negative_cache_ttl: float = 5.0
    mutability_cache_ttl: float = 600.0
    cache_max_entries: int = 100_000
    registry_workers: int = 16
    ecr_endpoint_url: str = ""
    insecure_registries: references.PlainHttpHosts = references.NO_PLAIN_HTTP
    """Registries reached over plain HTTP, canonical (`references.plain_http_hosts`)."""
    registry_ca_file: str = ""
    registry_pull_secrets: tuple[str, ...] = ()
    """Names of dockerconfigjson Secrets in `namespace` whose credentials the OCI client sends."""
    registry_pull_secrets_interval: float = pullsecrets.DEFAULT_INTERVAL
    pod_pull_secrets: bool = False
    """Use each pod's own pull Secrets (of its namespace) for its images."""
    max_body_bytes: int = server.DEFAULT_MAX_BODY_BYTES
    max_inflight: int = server.DEFAULT_MAX_INFLIGHT
    max_deciding: int = server.DEFAULT_MAX_DECIDING
    max_connections: int = server.DEFAULT_MAX_CONNECTIONS
    shed_lag: float = server.DEFAULT_SHED_LAG
    shutdown_delay: float = 3.0
    audit_interval: float = 0.0
    """Seconds between running-image audits by the Lease holder; 0: no audit."""
    audit_lease_name: str = names.AUDIT_LEASE_NAME
    audit_lifecycle_preview: bool = False
    """Also read each ECR repository's lifecycle policy preview (running images it would
    expire are `expiring`)."""


GIL_SWITCH_INTERVAL: Final = 0.001
"""Seconds a thread may hold the GIL while another waits for it (Python's default: 5 ms).

Work that grows with the input (a pod of thousands of containers, a policy of
thousands of globs) runs in threads so the event loop goes on answering; but each
time the loop gives up the GIL it waited up to 5 ms to get it back. Measured with a
10,000-container pod being decided: small admissions beside it took p50 18.8 ms at
5 ms, 6.5 ms at 1 ms. With only the event loop running it costs nothing."""


def _post_warning(
    revision: revisions.Revision, reason: str, message: str, *, reporter: str
) -> None:
    kubeapi.post_warning(
        namespace=revision.namespace,
        api_version=revision.api_version,
        kind=revision.kind,
        name=revision.name,
        uid=revision.uid,
        reason=reason,
        message=message,
        reporter=reporter,
    )


def registry_client(
    *,
    ecr_endpoint_url: str,
    insecure_registries: references.PlainHttpHosts,
    registry_ca_file: str,
    calls: audit.CallCounter,
) -> tuple[routing.RoutingClient, ecr.EcrClient, oci.OciClient]:
    """The registry clients of the audit, counting every request they send: the routing
    client, the ECR client (for lifecycle previews), and the OCI client (to be closed)."""
    oci_client = oci.OciClient(
        insecure_registries=insecure_registries,
        ca_file=registry_ca_file or None,
        on_request=calls.count,
    )
    ecr_client = ecr.EcrClient(
        endpoint_url=ecr_endpoint_url or None,
        upstream=oci_client,
        on_request=calls.count,
        max_pool_connections=2 * audit.WORKERS,
    )
    return routing.RoutingClient(ecr_client, oci_client), ecr_client, oci_client


def lifecycle_previewer(ecr_client: ecr.EcrClient) -> audit.LifecyclePreviewer:
    """The audit's reader of lifecycle policy previews, through `ecr_client`."""
    return lambda repository, digests, timeout: ecr_client.lifecycle_preview(
        repository, digests, timeout=timeout
    )


def _periodic_audit(config: Config) -> tuple[audit.PeriodicAudit, oci.OciClient]:
    calls = audit.CallCounter()
    client, ecr_client, oci_client = registry_client(
        ecr_endpoint_url=config.ecr_endpoint_url,
        insecure_registries=config.insecure_registries,
        registry_ca_file=config.registry_ca_file,
        calls=calls,
    )
    auditor = audit.Auditor(
        client,
        calls,
        pages=kubeapi.pod_pages,
        plain_http=config.insecure_registries,
        lifecycle=lifecycle_previewer(ecr_client) if config.audit_lifecycle_preview else None,
    )
    hostname = socket.gethostname()
    lease = leases.Lease(
        namespace=config.namespace,
        name=config.audit_lease_name,
        # Unique per process, as client-go does: two processes may share a host name.
        identity=f"{hostname}_{uuid.uuid4().hex[:8]}",
        read=kubeapi.read_lease,
        write=lambda namespace, body, create: kubeapi.write_lease(namespace, body, create=create),
    )
    periodic = audit.PeriodicAudit(
        auditor,
        lease,
        interval=config.audit_interval,
        post_warning=kubeapi.post_warning,
        deployment_uid=kubeapi.deployment_uid,
        reporter=hostname,
    )
    return periodic, oci_client


async def run(config: Config) -> None:
    """Build the webhook from `config` and serve until SIGTERM (after the shutdown delay)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
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
    periodic_audit = _periodic_audit(config) if config.audit_interval > 0 else None
    pull_secrets: pullsecrets.PullSecrets | None = None
    if config.registry_pull_secrets:
        # The audit asks the same private registries as admission, with the same Secrets.
        with_credentials = [oci_client] + ([periodic_audit[1]] if periodic_audit else [])

        def use_credentials(credentials: dockerconfig.Credentials) -> frozenset[str]:
            changed: frozenset[str] = frozenset()
            for client in with_credentials:
                changed |= client.use_credentials(credentials)
            return changed

        pull_secrets = pullsecrets.PullSecrets(
            namespace=config.namespace,
            names=config.registry_pull_secrets,
            use=use_credentials,
            interval=config.registry_pull_secrets_interval,
        )
        # Read before the first admission, so a replica is never ready without them.
        await asyncio.to_thread(pull_secrets.refresh)
    the_resolver = resolver.Resolver(
        routing.RoutingClient(
            ecr.EcrClient(
                endpoint_url=config.ecr_endpoint_url or None,
                max_pool_connections=max(32, config.registry_workers),
                upstream=oci_client,
            ),
            oci_client,
        ),
        ttl=config.cache_ttl,
        negative_ttl=config.negative_cache_ttl,
        mutability_ttl=config.mutability_cache_ttl,
        max_entries=config.cache_max_entries,
        workers=config.registry_workers,
    )
    the_rollouts = rollouts.Rollouts(
        kubeapi.list_pods,
        functools.partial(_post_warning, reporter=socket.gethostname()),
        plain_http=config.insecure_registries,
    )
    the_admission = admission.Admission(
        resolver=the_resolver,
        own_namespace=config.namespace,
        resolve_deadline=config.resolve_deadline,
        read_namespace_labels=kubeapi.namespace_labels,
        plain_http=config.insecure_registries,
        rollouts=the_rollouts,
        pod_secrets=(
            podsecrets.PodSecrets(use=oci_client.use_scoped) if config.pod_pull_secrets else None
        ),
    )
    admission_server = server.AdmissionServer(
        address=config.address,
        port=config.port,
        certfile=config.tls_cert_file,
        keyfile=config.tls_key_file,
        # Answer before the apiserver gives up: the deadline plus a little for the rest.
        answer_within=config.resolve_deadline + 1.0,
        max_body_bytes=config.max_body_bytes,
        max_inflight=config.max_inflight,
        max_deciding=config.max_deciding,
        waiting_on_registry=lambda: the_admission.waiting_on_registry,
        max_connections=config.max_connections,
        shed_lag=config.shed_lag,
    )
    tls: secret.SelfManagedTLS | None = None
    if config.tls_mode == "self-managed":
        tls = secret.SelfManagedTLS(
            namespace=config.namespace,
            secret_name=config.tls_secret_name,
            service_name=config.service_name,
            webhook_configurations=secret.WebhookConfigurations(
                mutating=config.mutating_webhook_configuration,
                validating=config.validating_webhook_configuration,
            ),
            tls_dir=config.tls_dir,
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
        # Every kept-alive connection closes after its next answer from now on, so
        # clients reconnect, through endpoints that soon lack this replica. Idle ones
        # stay open until the delay ends: closing a connection a client may be writing
        # a request on fails that request (HTTP/1.1 cannot tell it was not read), and
        # a client is least likely to pick one that stayed idle that long.
        admission_server.begin_draining()
        logger.info(
            "SIGTERM: not ready; draining",
            extra={"delay": config.shutdown_delay, "connections": admission_server.connections},
        )
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
    if periodic_audit is not None:
        # Threads of its own: a cycle never takes a turn of the admission event loop.
        periodic_audit[0].start()
    started = asyncio.Event()
    signals_task = loop.create_task(take_signals_back(started))
    freeze_task = loop.create_task(freeze_start_up_objects())
    tls_task = loop.create_task(tls.run(stop)) if tls is not None else None
    secrets_task = loop.create_task(pull_secrets.run(stop)) if pull_secrets is not None else None
    try:
        await the_admission.run(admission_server, stop_flag=stop, ready_flag=started)
    finally:
        signals_task.cancel()
        freeze_task.cancel()
        stop.set()
        for task in (tls_task, secrets_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if periodic_audit is not None:
            await asyncio.to_thread(periodic_audit[0].stop)
            periodic_audit[1].close()
        await health.stop()
        await the_resolver.aclose()
        the_rollouts.close()
        oci_client.close()
        logger.info("stopped")
