"""What every benchmark runs: a control plane, the ECR stub, the webhook, a floor server, vegeta.

CPU layout (2 cores): the webhook (or the floor server) is pinned to CPU 0 with
`taskset -c 0`; this process pins itself to CPU 1 before starting anything, so
everything else it starts (control plane, ECR stub, vegeta) inherits CPU 1.

The control plane is there because kopf needs an apiserver to watch DigestPolicies
and namespaces; it is consulted at start-up and by those watches, never per admission.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import datetime
import http.client
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support import cluster, controlplane, ports, webhook_process

REPO_ROOT = Path(__file__).resolve().parents[1]
WEBHOOK_CPU = 0
LOAD_CPU = 1
NAMESPACE = "bench"
"""Where the benchmark's pods live (indexed by the webhook like any namespace)."""
OWN_NAMESPACE = "digestguard"
"""The webhook's own namespace: always excluded, so admissions there make no registry call."""
ACCOUNT = "123456789012"
REGISTRY = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"
CRD_FILES = (
    REPO_ROOT / "charts" / "digestguard" / "crds" / "digestpolicies.digestguard.io.yaml",
    Path("/tmp/smoke/crd.yaml"),
)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM a server this harness started when the harness dies."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def vegeta_binary() -> Path:
    configured = os.environ.get("VEGETA")
    candidates = [Path(configured)] if configured else []
    candidates.append(controlplane.cache_root() / "bin" / "vegeta")
    on_path = shutil.which("vegeta")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit(
        "vegeta not found: GOTOOLCHAIN=local GOBIN=~/.cache/digestguard/bin "
        "go install github.com/tsenart/vegeta/v12@v12.13.0"
    )


def pin_to_load_cpu() -> None:
    """Pin this process (and so everything it starts) to the load generator's CPU."""
    if os.cpu_count() and os.cpu_count() >= 2:  # type: ignore[operator]
        os.sched_setaffinity(0, {LOAD_CPU})


def machine() -> dict[str, Any]:
    """What the numbers were taken on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
    }


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


# --------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path) -> Tls:
    """A CA and a serving certificate for 127.0.0.1, as the apiserver would trust them."""
    made = cluster.loopback_tls(directory)
    return Tls(made.ca_file, made.cert_file, made.key_file)


# --------------------------------------------------------------------------
# The control plane, with the CRD, namespaces and policies
# --------------------------------------------------------------------------


def policy(name: str, **spec: Any) -> dict[str, Any]:
    """A DigestPolicy pinning every ECR image (Mutate), with `spec` overrides."""
    return {
        "apiVersion": "digestguard.io/v1alpha1",
        "kind": "DigestPolicy",
        "metadata": {"name": name},
        "spec": {
            "images": ["*.dkr.ecr.*.amazonaws.com/**"],
            "action": "Mutate",
            "onResolveError": "Deny",
            "maxStale": "10m",
        }
        | spec,
    }


class Cluster:
    """A local control plane with the DigestPolicy CRD and the benchmark's namespaces."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.plane: controlplane.ControlPlane | None = None

    @property
    def kubeconfig(self) -> Path:
        assert self.plane is not None
        return self.plane.kubeconfig_path

    def start(self) -> Cluster:
        assets = controlplane.find_assets()
        if assets is None:
            raise SystemExit("control-plane binaries not found: run hack/envtest-assets.sh")
        self.plane = controlplane.ControlPlane(assets, self.workdir / "controlplane").start()
        crd = next(path for path in CRD_FILES if path.is_file())
        self.kubectl("apply", "-f", str(crd))
        self.kubectl(
            "wait",
            "--for=condition=Established",
            "crd/digestpolicies.digestguard.io",
            "--timeout=60s",
        )
        for namespace in (NAMESPACE, OWN_NAMESPACE):
            self.kubectl("create", "namespace", namespace)
        return self

    def stop(self) -> None:
        if self.plane is not None:
            self.plane.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def set_policies(self, *policies: dict[str, Any]) -> None:
        """Replace every DigestPolicy with these (before a webhook starts: it indexes at start)."""
        self.kubectl("delete", "digestpolicies", "--all", "--wait=true")
        for item in policies:
            self.kubectl("apply", "-f", "-", stdin=json.dumps(item))


# --------------------------------------------------------------------------
# Processes: the ECR stub, the webhook, the floor server
# --------------------------------------------------------------------------


def _http_json(url: str, body: Any = None, timeout: float = 30.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class Stub:
    """`python -m tests.support.ecr_stub` on the load CPU, answering any tag of any repository."""

    def __init__(self, workdir: Path, latency_ms: float = 0.0) -> None:
        self.port = ports.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"ecr-stub-{self.port}.log"
        workdir.mkdir(parents=True, exist_ok=True)
        self.latency_ms = latency_ms
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, **config: Any) -> Stub:
        """Start (or, after `stop()`, start again on the same port); `config` is in force
        before the first request is answered (as `configure()` fields)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    "taskset", "-c", str(LOAD_CPU), sys.executable, "-m", "tests.support.ecr_stub",
                    "--port", str(self.port), "--latency-ms", str(self.latency_ms),
                    "--config", json.dumps(config),
                ],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                self.calls()
                return self
            time.sleep(0.1)
        raise RuntimeError("the ECR stub did not start")

    def stop(self) -> None:
        """Stop the process: its port is closed, so connecting to it is refused."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> Stub:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def configure(self, **fields: Any) -> None:
        _http_json(f"{self.url}/_stub/config", fields)

    def release(self) -> None:
        _http_json(f"{self.url}/_stub/release", {})

    def reset(self) -> None:
        """Forget recorded requests and queued behaviours (the stub keeps every request)."""
        _http_json(f"{self.url}/_stub/reset", {})

    def requests(self) -> list[dict[str, Any]]:
        return list(_http_json(f"{self.url}/_stub/calls")["requests"])

    def calls(self) -> int:
        return int(_http_json(f"{self.url}/_stub/calls")["count"])


class _PinnedWebhook(webhook_process.WebhookProcess):
    def command(self) -> list[str]:
        return ["taskset", "-c", str(WEBHOOK_CPU), *super().command()]


class Webhook:
    """`digestguard serve --tls-mode files` pinned to the webhook CPU, logging at info."""

    def __init__(
        self,
        cluster: Cluster,
        tls: Tls,
        stub: Stub,
        workdir: Path,
        args: Sequence[str] = (),
        on_start: Callable[[int], object] | None = None,
    ) -> None:
        self._on_start = on_start
        self._process = _PinnedWebhook(
            kubeconfig=cluster.kubeconfig,
            namespace=OWN_NAMESPACE,
            workdir=workdir,
            ecr_endpoint_url=stub.url,
            certfile=tls.cert,
            keyfile=tls.key,
            cafile=tls.ca,
            # The chart's log level; later flags win over WebhookProcess's own.
            extra_args=["--log-level", "info", *args],
        )
        self.args = list(args)

    @property
    def pid(self) -> int:
        assert self._process.process is not None
        return self._process.process.pid

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    def url(self, handler: str = "mutate-pods") -> str:
        return self._process.url(handler)

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self._process.health_port}"

    def start(self) -> Webhook:
        self._process.start(ready_within=90)
        if self._on_start is not None:
            self._on_start(self.pid)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        return self._process.stop(sig)

    def __enter__(self) -> Webhook:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples that carry `labels`."""
        text = self._process.metrics()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            if head != name and not head.startswith(name + "{"):
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total


class Floor:
    """The floor: a minimal aiohttp TLS server answering a canned AdmissionReview."""

    def __init__(self, tls: Tls, workdir: Path) -> None:
        self.tls = tls
        self.port = ports.free_port()
        self.log_path = workdir / f"floor-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, handler: str = "mutate-pods") -> str:
        return f"https://127.0.0.1:{self.port}/{handler}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Floor:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    "taskset", "-c", str(WEBHOOK_CPU), sys.executable, "-m", "bench.floor",
                    "--port", str(self.port), "--cert", str(self.tls.cert),
                    "--key", str(self.tls.key),
                ],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(
                    urllib.request.Request(self.url(), data=b"{}", method="POST"),
                    context=context,
                    timeout=1,
                ).read()
                return self
            time.sleep(0.1)
        raise RuntimeError("the floor server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def __enter__(self) -> Floor:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


# --------------------------------------------------------------------------
# vegeta: fixed-rate (open-loop) HTTPS/1.1 keep-alive load, and what it measured
# --------------------------------------------------------------------------


def target(url: str, review: dict[str, Any]) -> str:
    """One line of vegeta's JSON targets format."""
    body = base64.b64encode(json.dumps(review, separators=(",", ":")).encode()).decode()
    return json.dumps(
        {
            "method": "POST",
            "url": url,
            "body": body,
            "header": {"Content-Type": ["application/json"]},
        }
    )


def write_targets(path: Path, lines: Iterable[str]) -> Path:
    with open(path, "w") as file:
        for line in lines:
            file.write(line + "\n")
    return path


@dataclasses.dataclass(frozen=True)
class Hit:
    """One request vegeta made."""

    at_ns: int
    code: int
    latency_s: float
    error: str
    body: bytes


def attack(
    *,
    targets: Path | None,
    rate: int,
    duration: float,
    ca: Path,
    output: Path,
    generator: Sequence[str] | None = None,
    timeout: float = 30.0,
    keep_bodies: bool = False,
    max_body: int | None = None,
    read: bool = True,
) -> list[Hit]:
    """Run vegeta at `rate` requests/s for `duration` s; return every request it made.

    Targets come from a file (round-robin) or, lazily, from the stdout of the
    `generator` command (each target used once). `max_body` keeps only the first
    bytes of each answer (enough to classify it, without holding every body).
    `read=False` returns nothing (read the output later with `read_hits`: decoding
    many requests takes seconds of this process's CPU).
    """
    if max_body is None:
        max_body = -1 if keep_bodies else 0
    command = [
        str(vegeta_binary()), "attack", "-format=json", f"-rate={rate}/s",
        f"-duration={duration}s", "-keepalive=true", "-http2=false",
        f"-root-certs={ca}", f"-timeout={timeout}s", f"-output={output}",
        f"-max-body={max_body}",
    ]  # fmt: skip
    if generator is not None:
        command.append("-lazy")
        producer = subprocess.Popen(list(generator), stdout=subprocess.PIPE, cwd=REPO_ROOT)
        try:
            subprocess.run(command, stdin=producer.stdout, check=True)
        finally:
            producer.kill()
            producer.wait()
    else:
        assert targets is not None
        subprocess.run([*command, f"-targets={targets}"], check=True)
    return read_hits(output) if read else []


def read_hits(path: Path) -> list[Hit]:
    encoded = subprocess.run(
        [str(vegeta_binary()), "encode", "--to", "csv", str(path)],
        capture_output=True,
        check=True,
    ).stdout.decode()
    hits = []
    for row in csv.reader(encoded.splitlines()):
        # timestamp, code, latency, bytes out, bytes in, error, base64 body, ...
        hits.append(
            Hit(
                at_ns=int(row[0]),
                code=int(row[1]),
                latency_s=int(row[2]) / 1e9,
                error=row[5],
                body=base64.b64decode(row[6]) if row[6] else b"",
            )
        )
    hits.sort(key=lambda hit: hit.at_ns)
    return hits


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(-(-fraction * len(sorted_values) // 1)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(hits: Sequence[Hit], rate: int, duration: float) -> dict[str, Any]:
    """Latency percentiles (ms) over every request, and the share answered 200."""
    latencies = sorted(hit.latency_s * 1000 for hit in hits)
    ok = sum(1 for hit in hits if hit.code == 200)
    return {
        "rate": rate,
        "duration_s": duration,
        "requests": len(hits),
        "ok_share": ok / len(hits) if hits else 0.0,
        "errors": sorted({hit.error for hit in hits if hit.error})[:5],
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p90_ms": round(percentile(latencies, 0.90), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "p999_ms": round(percentile(latencies, 0.999), 3),
        "max_ms": round(latencies[-1], 3) if latencies else float("nan"),
        "mean_ms": round(statistics.fmean(latencies), 3) if latencies else float("nan"),
    }


@contextlib.contextmanager
def workdir(base: Path, name: str) -> Iterator[Path]:
    path = base / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path


# --------------------------------------------------------------------------
# Sampling beside a load: periodic samplers, single admissions, health probes, logs
# --------------------------------------------------------------------------


class Sampler:
    """Call `fn` every `every` seconds on a thread; keep (wall-clock ns, value) pairs.

    A call that raises is kept as its error's text, so a stall or a refusal shows
    up in the samples instead of ending them.
    """

    def __init__(self, fn: Callable[[], Any], every: float) -> None:
        self.fn = fn
        self.every = every
        self.samples: list[tuple[int, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            at = time.time_ns()
            try:
                value = self.fn()
            except Exception as error:  # a failed sample is data
                value = f"error: {type(error).__name__}: {error}"[:200]
            self.samples.append((at, value))
            next_at += self.every
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def healthz_ms(health_url: str, timeout: float = 5.0) -> float:
    """One GET /healthz on a new connection (as the kubelet probes); its latency in ms."""
    host, _, port = health_url.removeprefix("http://").partition(":")
    started = time.perf_counter()
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
    finally:
        connection.close()
    return (time.perf_counter() - started) * 1000


class AdmissionClient:
    """Single admissions, one at a time, over one keep-alive HTTPS connection
    (reopened if it breaks), as the apiserver sends them."""

    def __init__(self, url: str, ca: Path, timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 443
        self.path = parsed.path
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=str(ca))
        self._connection: http.client.HTTPSConnection | None = None

    def _connect(self) -> http.client.HTTPSConnection:
        if self._connection is None:
            self._connection = http.client.HTTPSConnection(
                self.host, self.port, context=self.context, timeout=self.timeout
            )
            self._connection.connect()
        return self._connection

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, float, bytes]:
        """POST one body; (status, latency s, answer). Status 0: no answer (the error)."""
        sent = {"Content-Type": "application/json"} | (headers or {})
        started = time.perf_counter()
        try:
            connection = self._connect()
            connection.request("POST", self.path, body=body, headers=sent)
            response = connection.getresponse()
            answer = response.read()
            if response.will_close:
                self.close()
            return response.status, time.perf_counter() - started, answer
        except (OSError, http.client.HTTPException) as error:
            self.close()
            return 0, time.perf_counter() - started, str(error).encode()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def log_events(path: Path, message: str) -> list[dict[str, Any]]:
    """The webhook's JSON log lines whose message starts with `message`, each with
    `at_ns` (wall clock, millisecond resolution) added."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if message not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not str(entry.get("message", "")).startswith(message):
            continue
        moment = datetime.datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
        entry["at_ns"] = int(moment.replace(tzinfo=datetime.UTC).timestamp() * 1e9)
        events.append(entry)
    return events


def latency_summary(latencies_s: Iterable[float]) -> dict[str, Any]:
    """Count, p50, p99 and max (ms) of some latencies in seconds."""
    ordered = sorted(value * 1000 for value in latencies_s)
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50), 3) if ordered else None,
        "p99_ms": round(percentile(ordered, 0.99), 3) if ordered else None,
        "max_ms": round(ordered[-1], 3) if ordered else None,
    }
