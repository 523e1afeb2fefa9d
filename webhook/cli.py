"""`digestguard serve` runs the webhook; `digestguard resolve IMAGE...` pins images by hand;
`digestguard pin PATH...` pins the images of manifests in place.
`digestguard audit` says whether what the cluster runs can still be pulled.

Every `serve` flag has an environment variable: `--cache-ttl` is `DIGESTGUARD_CACHE_TTL`.
"""

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, Final, NoReturn

from webhook import __version__, app, errors, logs, names
from webhook.core import durations, outcomes, pinning, references, text
from webhook.pin import command
from webhook.registries import oneshot
from webhook.registries.oci import dockerconfig
from webhook.serving import audit, kubeapi

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
    Flag(
        "cache-ttl",
        "60s",
        "how long a resolved tag is trusted; one in use is refreshed in the background"
        " before that ends",
    ),
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
    Flag(
        "registry-pull-secrets",
        "",
        "comma-separated names of kubernetes.io/dockerconfigjson Secrets in --namespace whose"
        " credentials are sent to the registries they list",
    ),
    Flag(
        "pod-pull-secrets",
        "false",
        "true: also use each pod's imagePullSecrets (or its ServiceAccount's), read in the"
        " pod's own namespace, for that pod's images (needs get on secrets and"
        " serviceaccounts)",
    ),
    Flag(
        "registry-pull-secrets-interval",
        "30s",
        "how often the --registry-pull-secrets are read again (a rotated password is used"
        " within it)",
    ),
    Flag("max-body-bytes", str(16 * 1024 * 1024), "largest AdmissionReview accepted"),
    Flag(
        "max-inflight",
        "200",
        "admissions answered at once; more are refused at once with HTTP 429 (the"
        " apiserver then applies the webhook's failurePolicy)",
    ),
    Flag(
        "max-deciding",
        "32",
        "of those, admissions being decided at once (not waiting on a registry); the next"
        " waits up to 50 ms for a turn, then gets HTTP 429",
    ),
    Flag(
        "max-connections",
        "400",
        "open client connections, counted before TLS; more are reset as they are accepted",
    ),
    Flag(
        "shed-lag",
        "5ms",
        "how far the event loop may lag behind, for 200 ms in a row, before new admissions"
        " are refused at once with HTTP 429 (0: never shed)",
    ),
    Flag("shutdown-delay", "3s", "how long to stay up, not ready, after SIGTERM before draining"),
    Flag(
        "audit-interval",
        "0",
        "how often the replica holding the audit Lease checks that the images running pods"
        " use can still be pulled (0: no audit)",
    ),
    Flag(
        "audit-lifecycle-preview",
        "false",
        "true: the audit also reads each ECR repository's lifecycle policy preview, and a"
        " running image the policy would expire or archive now is 'expiring' (needs"
        " ecr:StartLifecyclePolicyPreview and ecr:GetLifecyclePolicyPreview)",
    ),
    Flag(
        "audit-lease-name",
        names.AUDIT_LEASE_NAME,
        "the Lease (in --namespace) whose holder runs the audit: one replica at a time",
    ),
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


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 64 (EX_USAGE): argparse's own 2 is what `resolve`
    and `pin` say when a registry could not tell."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="digestguard", description=__doc__)
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
        "pinned. Exit 1 if an image does not exist or is archived, 2 if the registry could"
        " not tell.",
    )
    resolve.add_argument("images", nargs="+", metavar="IMAGE")
    resolve.add_argument("--drop-tag", action="store_true", help="print repo@sha256:… only")
    _add_registry_flags(resolve)
    resolve.add_argument("--timeout", default="10s", help="time budget for all lookups")
    resolve.set_defaults(run=_resolve)

    pin = commands.add_parser(
        "pin",
        help="pin the images of Kubernetes manifests in place",
        description="Pin the images of Pods and workloads in manifest files, directories"
        " (*.yaml, *.yml, recursively) or standard input ('-') to their digests, in place,"
        " keeping comments and formatting. As a KRM function (--krm, or a ResourceList on"
        " standard input) it writes the ResourceList with results. Exit 0 when everything"
        " is pinned, 1 when an image is missing or invalid (or, with --check, not pinned),"
        " 2 when a registry could not tell, 64 on bad usage or unreadable YAML.",
    )
    pin.add_argument(
        "paths", nargs="*", metavar="PATH", help="files, directories, or '-' for standard input"
    )
    pin.add_argument(
        "--check",
        action="store_true",
        help="change nothing; list every image not pinned or missing (file:line), exit 1 if any",
    )
    pin.add_argument(
        "--stdout",
        action="store_true",
        help="write the manifests to standard output instead of in place (also: -o -)",
    )
    pin.add_argument("-o", dest="output", default=None, metavar="-", help="'-': as --stdout")
    pin.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="FILE",
        help="DigestPolicy YAML: pin only the images they cover, as they say (keepTag);"
        " repeatable. Without it every image is pinned, keeping its tag",
    )
    pin.add_argument(
        "--namespace-labels",
        default=None,
        metavar="K=V,...",
        help="labels of the manifests' namespace, for the policies' namespaceSelector"
        " (without it namespaceSelector is not matched: manifests do not carry them)",
    )
    pin.add_argument(
        "--krm",
        action="store_true",
        help="run as a KRM function: a ResourceList on standard input, results on output",
    )
    _add_registry_flags(pin)
    pin.add_argument("--timeout", default="30s", help="time budget for all lookups")
    pin.set_defaults(run=_pin)

    audit_command = commands.add_parser(
        "audit",
        help="check that the images running pods use can still be pulled",
        description="List the pods (kubeconfig, or the in-cluster service account) and ask"
        " the registries about the digest each container runs and the tag it follows:"
        " current, tag-moved, gone, archived or unknown. Exit 1 if an image is gone or"
        f" archived, {EXIT_UNKNOWN} if the pods could not be listed, 0 otherwise.",
    )
    audit_command.add_argument(
        "-n", "--namespace", default="", help="audit one namespace (default: all namespaces)"
    )
    audit_command.add_argument(
        "-o", "--output", default="table", choices=("table", "json"), help="output format"
    )
    audit_command.add_argument(
        "--kubeconfig", default="", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    _add_registry_flags(audit_command)
    audit_command.add_argument(
        "--timeout", default="60s", help="time budget for all registry lookups"
    )
    audit_command.add_argument(
        "--lifecycle-preview",
        action="store_true",
        help="also read each ECR repository's lifecycle policy preview: a running image the"
        " policy would expire or archive now is 'expiring' (needs"
        " ecr:StartLifecyclePolicyPreview and ecr:GetLifecyclePolicyPreview)",
    )
    audit_command.set_defaults(run=_audit)
    return parser


def _add_registry_flags(command: argparse.ArgumentParser) -> None:
    """The serve flags that say how registries are reached, for a one-shot command."""
    for name in ("ecr-endpoint-url", "insecure-registries", "registry-ca-file"):
        flag = next(f for f in SERVE_FLAGS if f.name == name)
        command.add_argument(
            f"--{flag.name}",
            default=os.environ.get(flag.env, flag.default),
            help=f"{flag.help} [env {flag.env}]",
        )


def serve_config(options: argparse.Namespace) -> app.Config:
    """Check the serve flags together, or raise `ConfigurationError` naming the flag."""
    namespace = options.namespace or os.environ.get("POD_NAMESPACE", "")
    if not namespace:
        raise errors.ConfigurationError("--namespace (or POD_NAMESPACE) is required")
    if options.tls_mode not in ("self-managed", "files"):
        raise errors.ConfigurationError("--tls-mode must be 'self-managed' or 'files'")
    if options.tls_mode == "files" and not (options.tls_cert_file and options.tls_key_file):
        raise errors.ConfigurationError("--tls-mode files needs --tls-cert-file and --tls-key-file")
    if options.log_level.lower() not in logs.LEVELS:
        raise errors.ConfigurationError(
            f"--log-level: {options.log_level!r} is not one of {', '.join(logs.LEVELS)}"
        )
    cert, key = options.tls_cert_file, options.tls_key_file
    if options.tls_mode == "self-managed":
        cert = os.path.join(options.tls_dir, SELF_MANAGED_CERT_FILE)
        key = os.path.join(options.tls_dir, SELF_MANAGED_KEY_FILE)
    config = app.Config(
        address=options.address,
        port=_port(options.port, "port"),
        health_port=_port(options.health_port, "health-port"),
        namespace=namespace,
        tls_mode=options.tls_mode,
        tls_cert_file=cert,
        tls_key_file=key,
        tls_secret_name=options.tls_secret_name,
        service_name=options.service_name,
        mutating_webhook_configuration=options.mutating_webhook_configuration,
        validating_webhook_configuration=options.validating_webhook_configuration,
        tls_dir=options.tls_dir,
        resolve_deadline=_seconds(options.resolve_deadline, "resolve-deadline"),
        cache_ttl=_seconds(options.cache_ttl, "cache-ttl"),
        negative_cache_ttl=_seconds(options.negative_cache_ttl, "negative-cache-ttl"),
        mutability_cache_ttl=_seconds(options.mutability_cache_ttl, "mutability-cache-ttl"),
        cache_max_entries=_integer(options.cache_max_entries, "cache-max-entries", least=0),
        registry_workers=_integer(options.registry_workers, "registry-workers", least=1),
        ecr_endpoint_url=options.ecr_endpoint_url,
        insecure_registries=references.plain_http_hosts(_hosts(options.insecure_registries)),
        registry_ca_file=options.registry_ca_file,
        registry_pull_secrets=_secret_names(options.registry_pull_secrets, "registry-pull-secrets"),
        pod_pull_secrets=_boolean(options.pod_pull_secrets, "pod-pull-secrets"),
        registry_pull_secrets_interval=_seconds(
            options.registry_pull_secrets_interval, "registry-pull-secrets-interval"
        ),
        max_body_bytes=_integer(options.max_body_bytes, "max-body-bytes", least=1024),
        max_inflight=_integer(options.max_inflight, "max-inflight", least=1),
        max_deciding=_integer(options.max_deciding, "max-deciding", least=1),
        max_connections=_integer(options.max_connections, "max-connections", least=1),
        shed_lag=_seconds(options.shed_lag, "shed-lag"),
        shutdown_delay=_seconds(options.shutdown_delay, "shutdown-delay"),
        audit_interval=_seconds(options.audit_interval, "audit-interval"),
        audit_lease_name=options.audit_lease_name,
        audit_lifecycle_preview=_boolean(
            options.audit_lifecycle_preview, "audit-lifecycle-preview"
        ),
    )
    if config.resolve_deadline <= 0:
        raise errors.ConfigurationError("--resolve-deadline must be above zero")
    if config.registry_pull_secrets_interval <= 0:
        raise errors.ConfigurationError("--registry-pull-secrets-interval must be above zero")
    if 0 < config.audit_interval < 1:
        raise errors.ConfigurationError("--audit-interval must be 0 (no audit) or at least 1s")
    if config.audit_interval and not config.audit_lease_name:
        raise errors.ConfigurationError("--audit-lease-name must not be empty")
    return config


def _serve(options: argparse.Namespace) -> int:
    config = serve_config(options)
    logs.configure(options.log_level)
    asyncio.run(app.run(config))
    return 0


def _resolve(options: argparse.Namespace) -> int:
    timeout = _seconds(options.timeout, "timeout")
    plain_http = references.plain_http_hosts(_hosts(options.insecure_registries))
    parsed: list[references.ImageReference] = []
    for image in options.images:
        try:
            reference = references.parse(image, plain_http=plain_http)
        except errors.InvalidReference as error:
            raise errors.ConfigurationError(str(error)) from None
        parsed.append(reference)
    queries = {outcomes.existence_query(reference): 0.0 for reference in parsed}
    results = oneshot.lookup(
        queries,
        budget=timeout,
        ecr_endpoint_url=options.ecr_endpoint_url or None,
        plain_http=plain_http,
        ca_file=options.registry_ca_file or None,
        credentials=dockerconfig.from_environment(),
    )
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
        elif isinstance(outcome, outcomes.Archived):
            status = max(status, EXIT_MISSING)
            print(f"{reference.original}: {outcome.message}", file=sys.stderr)
        else:
            status = EXIT_UNKNOWN
            print(f"{reference.original}: {outcome.message}", file=sys.stderr)
    return status


def _pin(options: argparse.Namespace) -> int:
    if options.output not in (None, "-"):
        raise errors.ConfigurationError(
            f"-o: only '-' (standard output) is supported, not {_shown(options.output)}"
        )
    paths = tuple(options.paths)
    if not paths:
        if sys.stdin.isatty() and not options.krm:
            raise errors.ConfigurationError("pin: name files or directories, or '-' for stdin")
        paths = (command.STDIN,)
    labels = (
        None if options.namespace_labels is None else pinning.parse_labels(options.namespace_labels)
    )
    pin_options = command.Options(
        paths=paths,
        check=options.check,
        stdout=options.stdout or options.output == "-",
        krm=options.krm,
        policy_files=tuple(options.policy),
        namespace_labels=labels,
        budget=_seconds(options.timeout, "timeout"),
        ecr_endpoint_url=options.ecr_endpoint_url or None,
        plain_http=references.plain_http_hosts(_hosts(options.insecure_registries)),
        ca_file=options.registry_ca_file or None,
        credentials=dockerconfig.from_environment(),
    )
    return command.run(pin_options, sys.stdin, sys.stdout, sys.stderr)


AUDIT_COLUMNS: Final = ("NAMESPACE", "OWNER", "CONTAINER", "IMAGE", "DIGEST", "STATE")


def _audit(options: argparse.Namespace) -> int:
    timeout = _seconds(options.timeout, "timeout")
    if timeout <= 0:
        raise errors.ConfigurationError("--timeout must be above zero")
    plain_http = references.plain_http_hosts(_hosts(options.insecure_registries))
    kubeapi.load_configuration_for_cli(options.kubeconfig or None)
    calls = audit.CallCounter()
    client, ecr_client, oci_client = app.registry_client(
        ecr_endpoint_url=options.ecr_endpoint_url,
        insecure_registries=plain_http,
        registry_ca_file=options.registry_ca_file,
        calls=calls,
    )
    auditor = audit.Auditor(
        client,
        calls,
        pages=kubeapi.pod_pages,
        plain_http=plain_http,
        budget=timeout,
        workers=2 * audit.WORKERS,
        lifecycle=app.lifecycle_previewer(ecr_client) if options.lifecycle_preview else None,
    )
    try:
        report = auditor.run(options.namespace or None)
    except errors.KubernetesError as error:
        print(f"digestguard: {error}", file=sys.stderr)
        return EXIT_UNKNOWN
    finally:
        oci_client.close()
    if options.output == "json":
        print(json.dumps(_audit_document(report), indent=2))
    else:
        _print_table(report)
    for skipped in report.skipped[: audit.SKIPPED_LOGGED]:
        where = f"{skipped.namespace}/{skipped.pod} {skipped.container}".strip()
        print(f"digestguard: skipped {where}: {skipped.reason}", file=sys.stderr)
    for problem in report.lifecycle_problems[: audit.SKIPPED_LOGGED]:
        print(f"digestguard: lifecycle preview not read: {problem}", file=sys.stderr)
    if report.skipped_count > audit.SKIPPED_LOGGED:
        rest = report.skipped_count - audit.SKIPPED_LOGGED
        print(f"digestguard: skipped {rest} more containers", file=sys.stderr)
    return EXIT_MISSING if report.broken else 0


def _audit_document(report: audit.Report) -> dict[str, Any]:
    return {
        "pods": report.pods,
        "states": report.states(),
        "registryCalls": dict(report.registry_calls),
        "findings": [
            {
                "namespace": f.running.namespace,
                "owner": {"kind": f.running.owner.kind, "name": f.running.owner.name},
                "container": f.running.container,
                "containerList": f.running.list_name,
                "image": f.running.image,
                "repository": str(f.running.repository),
                "digest": f.running.digest,
                "tag": f.running.tag,
                "tagDigest": f.tag_digest,
                "state": f.state.value,
                "detail": f.detail,
                "pods": f.pods,
            }
            for f in report.findings
        ],
        "skipped": [dataclasses.asdict(s) for s in report.skipped],
        "skippedCount": report.skipped_count,
        "lifecycleProblems": list(report.lifecycle_problems),
    }


def _print_table(report: audit.Report) -> None:
    rows = [AUDIT_COLUMNS] + [
        (
            f.running.namespace,
            str(f.running.owner),
            f.running.container_label,
            f.running.image,
            f.running.digest,
            f.state.value,
        )
        for f in report.findings
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(AUDIT_COLUMNS))]
    for row in rows:
        print(
            "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    if not report.findings:
        print(f"digestguard: no running images found in {report.pods} pods", file=sys.stderr)
    unknown = [f for f in report.findings if f.state.value == "unknown"]
    if unknown:
        # Why the registry could not tell, once per reason: credentials, IAM, network.
        reasons = list(dict.fromkeys(text.clipped(f.detail, 300) for f in unknown))
        print(f"digestguard: {len(unknown)} running image(s) unknown:", file=sys.stderr)
        for reason in reasons[:5]:
            print(f"  {reason}", file=sys.stderr)
    broken = len(report.broken)
    if broken:
        print(
            f"digestguard: {broken} running image(s) cannot be pulled again"
            f" ({', '.join(sorted({f.state.value for f in report.broken}))})",
            file=sys.stderr,
        )


def _seconds(raw: str, flag: str) -> float:
    try:
        return durations.parse_seconds(raw)
    except errors.InvalidDuration as error:
        raise errors.ConfigurationError(f"--{flag}: {text.clipped(error, 120)}") from None


def _boolean(raw: Any, flag: str) -> bool:
    value = str(raw).strip().lower()
    if value not in ("true", "false"):
        raise errors.ConfigurationError(f"--{flag}: {_shown(raw)} is not true or false")
    return value == "true"


def _hosts(raw: str) -> tuple[str, ...]:
    """The entries of a comma-separated host[:port] list, empty ones left out."""
    return tuple(entry.strip() for entry in raw.split(",") if entry.strip())


_SECRET_NAME: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _secret_names(raw: str, flag: str) -> tuple[str, ...]:
    """The Secret names of a comma-separated list, each a DNS subdomain name."""
    found = _hosts(raw)
    for name in found:
        if len(name) > 253 or not _SECRET_NAME.fullmatch(name):
            raise errors.ConfigurationError(f"--{flag}: {_shown(name)} is not a Secret name")
    return tuple(dict.fromkeys(found))


def _integer(raw: Any, flag: str, *, least: int | None = None) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise errors.ConfigurationError(f"--{flag}: {_shown(raw)} is not a whole number") from None
    if least is not None and value < least:
        raise errors.ConfigurationError(f"--{flag} must be >= {least}, not {value}")
    return value


def _port(raw: Any, flag: str) -> int:
    value = _integer(raw, flag, least=0)
    if value > 65535:
        raise errors.ConfigurationError(f"--{flag}: {value} is not a TCP port (0-65535)")
    return value


def _shown(value: Any) -> str:
    """A flag's value in an error message: quoted, and cut short if it is long."""
    return text.quoted(str(value), 80)


if __name__ == "__main__":
    sys.exit(main())
