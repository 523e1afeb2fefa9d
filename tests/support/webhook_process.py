"""Run `digestguard serve` as a real process, the way the chart's Deployment runs it."""

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from prometheus_client.parser import text_string_to_metric_families

from tests.support import ports

REPO_ROOT = Path(__file__).resolve().parents[2]


def ready(health_port: int) -> bool:
    """Whether the webhook whose health server is on `health_port` answers /readyz 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the webhook when the process that started it dies."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


class ServeProcess:
    """A `digestguard serve` process: started, waited on until /readyz answers, stopped.

    Subclasses say how it is started: `command()` and `environment()`.
    """

    def __init__(self, *, workdir: Path, port: int, health_port: int, cwd: Path) -> None:
        self.workdir = workdir
        self.port = port
        self.health_port = health_port
        self.cwd = cwd
        self.log_path = workdir / f"webhook-{uuid.uuid4().hex[:12]}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def url(self, handler_id: str) -> str:
        return f"{self.base_url}/{handler_id}"

    def _start_once(self, ready_within: float) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.cwd,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the webhook exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the webhook was not ready within {ready_within}s:\n{self.log_tail()}")

    def ready(self) -> bool:
        return ready(self.health_port)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def metric(self, sample: str, **labels: str) -> float:
        """The sum of the samples named `sample` (e.g. `digestguard_registry_calls_total`)
        whose labels include `labels`; 0 when there is none yet."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics()):
            for found in family.samples:
                if found.name == sample and all(
                    found.labels.get(key) == value for key, value in labels.items()
                ):
                    total += found.value
        return total

    def start(self, ready_within: float = 60.0) -> Self:
        return self._start_once(ready_within)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self, sig: int = signal.SIGTERM, within: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
            return None

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


SERVING_LOG_LINE = r'"serving admission reviews".*?"url": "https://[^"]*:(\d+)"'
"""What the webhook logs once it listens: the port it bound (group 1)."""


class WebhookProcess(ServeProcess):
    """`python -m webhook serve` with files TLS and an ECR endpoint, on loopback: the
    admission port is the one it bound (port 0) and said in its log; the health port,
    which cannot be 0 (that turns it off), is one no connection takes (`ports`)."""

    def __init__(
        self,
        *,
        kubeconfig: Path,
        namespace: str,
        workdir: Path,
        ecr_endpoint_url: str,
        certfile: Path,
        keyfile: Path,
        cafile: Path,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(workdir=workdir, port=0, health_port=ports.free_port(), cwd=REPO_ROOT)
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.ecr_endpoint_url = ecr_endpoint_url
        self.certfile = certfile
        self.keyfile = keyfile
        self.cafile = cafile
        self.extra_args = list(extra_args)
        self.env = dict(env or {})

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "webhook",
            "serve",
            "--address",
            "127.0.0.1",
            "--port",
            "0",
            "--health-port",
            str(self.health_port),
            "--namespace",
            self.namespace,
            "--tls-mode",
            "files",
            "--tls-cert-file",
            str(self.certfile),
            "--tls-key-file",
            str(self.keyfile),
            "--ecr-endpoint-url",
            self.ecr_endpoint_url,
            "--shutdown-delay",
            "0s",
            "--log-level",
            "debug",
            *self.extra_args,
        ]

    def start(self, ready_within: float = 60.0, attempts: int = 3) -> Self:
        """Start and wait until ready; learn the admission port it bound from its log.
        Should another server have been told the same health port, retry on a new one."""
        for attempt in range(attempts):
            # A log of its own for each start: the port read from it is this start's.
            self.log_path = self.workdir / f"webhook-{uuid.uuid4().hex[:12]}.log"
            try:
                self._start_once(ready_within)
            except RuntimeError as error:
                if "address already in use" not in str(error) or attempt + 1 == attempts:
                    raise
                self.stop()
                self.health_port = ports.free_port()
                continue
            assert self.process is not None
            try:
                self.port = ports.announced_port(
                    self.log_path, SERVING_LOG_LINE, self.process, ready_within
                )
            except RuntimeError as error:
                self.stop()
                raise RuntimeError(f"the webhook {error}") from None
            return self
        raise AssertionError("unreachable")

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONPATH": str(REPO_ROOT),
            **self.env,
        }

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))

    def __enter__(self) -> Self:
        return self.start()
