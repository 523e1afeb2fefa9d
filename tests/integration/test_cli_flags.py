"""`digestguard serve` refuses a bad flag or environment value before it starts anything:
exit 64 and one line on stderr naming the flag, whatever the value."""

import argparse
import os
import subprocess
import sys

import pytest

from webhook import app, cli
from webhook.core import references


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(cli.ENV_PREFIX)}
    clean.pop("POD_NAMESPACE", None)
    return subprocess.run(
        [sys.executable, "-m", "webhook", "serve", *args],
        capture_output=True,
        text=True,
        env=clean | (env or {}),
        timeout=60,
        check=False,
    )


BAD = [
    (["--namespace", "dg", "--port", "abc"], "--port: 'abc' is not a whole number"),
    (["--namespace", "dg", "--port", "70000"], "--port: 70000 is not a TCP port (0-65535)"),
    (["--namespace", "dg", "--health-port", "-1"], "--health-port must be >= 0, not -1"),
    (["--namespace", "dg", "--cache-ttl", "soon"], "--cache-ttl: "),
    (["--namespace", "dg", "--resolve-deadline", "0s"], "--resolve-deadline must be above zero"),
    (["--namespace", "dg", "--registry-workers", "0"], "--registry-workers must be >= 1, not 0"),
    (["--namespace", "dg", "--max-inflight", "0"], "--max-inflight must be >= 1, not 0"),
    (["--namespace", "dg", "--max-connections", "x"], "--max-connections: 'x' is not a whole"),
    (["--namespace", "dg", "--max-body-bytes", "10"], "--max-body-bytes must be >= 1024, not 10"),
    (["--namespace", "dg", "--tls-mode", "none"], "--tls-mode must be 'self-managed' or 'files'"),
    (["--namespace", "dg", "--tls-mode", "files"], "--tls-mode files needs --tls-cert-file"),
    (["--namespace", "dg", "--log-level", "loud"], "--log-level: 'loud' is not one of debug"),
    (
        ["--namespace", "dg", "--insecure-registries", "http://registry:5000"],
        "plain-HTTP registry 'http://registry:5000' is not a host[:port]",
    ),
    (
        ["--namespace", "dg", "--registry-pull-secrets", "regcred,Bad_Name"],
        "--registry-pull-secrets: 'Bad_Name' is not a Secret name",
    ),
    (
        ["--namespace", "dg", "--registry-pull-secrets-interval", "0s"],
        "--registry-pull-secrets-interval must be above zero",
    ),
    (["--namespace", "dg", "--pod-pull-secrets", "yes"], "--pod-pull-secrets: 'yes' is not true"),
    ([], "--namespace (or POD_NAMESPACE) is required"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[m.split(" ")[0] for _, m in BAD])
def test_a_bad_flag_exits_64_with_one_line_naming_it(args: list[str], message: str) -> None:
    result = serve(*args)
    assert result.returncode == cli.EXIT_USAGE, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"digestguard: {message}"), lines[0]


def test_a_bad_environment_value_is_named_by_its_flag() -> None:
    result = serve(env={"POD_NAMESPACE": "dg", "DIGESTGUARD_CACHE_TTL": "forever"})
    assert result.returncode == cli.EXIT_USAGE
    assert result.stderr.startswith("digestguard: --cache-ttl: ")


def test_a_huge_bad_value_is_not_echoed_whole() -> None:
    result = serve("--namespace", "dg", "--port", "9" * 100_000 + "x")
    assert result.returncode == cli.EXIT_USAGE
    assert len(result.stderr) < 300, result.stderr[:300]


def parsed(*args: str) -> app.Config:
    options = cli._parser().parse_args(["serve", *args])
    assert isinstance(options, argparse.Namespace)
    return cli.serve_config(options)


def test_every_flag_reaches_the_one_config_object() -> None:
    config = parsed(
        *("--namespace", "dg", "--port", "9443", "--health-port", "0"),
        *("--tls-secret-name", "s", "--service-name", "svc", "--tls-dir", "/run/tls"),
        *("--mutating-webhook-configuration", "m", "--validating-webhook-configuration", "v"),
        *("--resolve-deadline", "2s", "--cache-ttl", "30s", "--negative-cache-ttl", "1s"),
        *("--mutability-cache-ttl", "1m", "--cache-max-entries", "10", "--registry-workers", "4"),
        *("--ecr-endpoint-url", "http://127.0.0.1:1", "--insecure-registries", "reg:80, r2:5000"),
        *("--max-body-bytes", "4096", "--max-inflight", "7", "--max-connections", "9"),
        *("--max-deciding", "5", "--shed-lag", "20ms"),
        *("--registry-pull-secrets", "regcred, hub.creds,regcred"),
        *("--registry-pull-secrets-interval", "10s", "--pod-pull-secrets", "True"),
        *(
            "--shutdown-delay",
            "0s",
        ),
    )
    assert config == app.Config(
        namespace="dg",
        tls_mode="self-managed",
        tls_cert_file="/run/tls/tls.crt",
        tls_key_file="/run/tls/tls.key",
        address="0.0.0.0",
        port=9443,
        health_port=0,
        tls_secret_name="s",
        service_name="svc",
        mutating_webhook_configuration="m",
        validating_webhook_configuration="v",
        tls_dir="/run/tls",
        resolve_deadline=2.0,
        cache_ttl=30.0,
        negative_cache_ttl=1.0,
        mutability_cache_ttl=60.0,
        cache_max_entries=10,
        registry_workers=4,
        ecr_endpoint_url="http://127.0.0.1:1",
        insecure_registries=references.PlainHttpHosts(frozenset({"reg", "r2:5000"})),
        registry_ca_file="",
        registry_pull_secrets=("regcred", "hub.creds"),
        registry_pull_secrets_interval=10.0,
        pod_pull_secrets=True,
        max_body_bytes=4096,
        max_inflight=7,
        max_deciding=5,
        max_connections=9,
        shed_lag=0.02,
        shutdown_delay=0.0,
    )


def test_the_flag_defaults_are_the_config_defaults() -> None:
    config = parsed("--namespace", "dg")
    defaults = app.Config(
        namespace="dg",
        tls_mode="self-managed",
        tls_cert_file="/tmp/tls/tls.crt",
        tls_key_file="/tmp/tls/tls.key",
    )
    assert config == defaults
