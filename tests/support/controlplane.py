"""A real, local Kubernetes control plane for the test suite.

etcd, kube-apiserver and kube-controller-manager run as child processes on
loopback ports, the way controller-runtime's envtest runs them, plus the
controller manager so that Deployments really produce ReplicaSets and Pods and
namespaces really get their ``default`` ServiceAccount. No kubelet runs: pods
are admitted and stored, never started.

The binaries come from ``hack/envtest-assets.sh`` (or a user's own
``KUBEBUILDER_ASSETS``); this module never builds anything. Typical use::

    assets = find_assets()
    with ControlPlane(assets, tmp_dir) as cp:
        subprocess.run(["kubectl", "--kubeconfig", str(cp.kubeconfig_path), ...])

Each process logs to ``<work_dir>/<name>.log``; a start-up failure raises
:class:`ControlPlaneError` carrying the tail of the log that explains it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.support import ports

# Keep these defaults in step with hack/envtest-assets.sh (a test checks it).
K8S_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v3.22.0"

CONTROL_PLANE_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "digestguard-admin"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"

_LOG_TAIL_LINES = 40


_PORT_ATTEMPTS = 3


class ControlPlaneError(RuntimeError):
    """The control plane could not be started (the message has the log tail)."""


# --------------------------------------------------------------------------
# Where the binaries are
# --------------------------------------------------------------------------


def _versions() -> tuple[str, str, str]:
    return (
        os.environ.get("K8S_VERSION") or K8S_VERSION,
        os.environ.get("ETCD_VERSION") or ETCD_VERSION,
        os.environ.get("HELM_VERSION") or HELM_VERSION,
    )


def cache_root() -> Path:
    """``${DIGESTGUARD_CACHE:-$HOME/.cache/digestguard}``, as the script uses it."""
    configured = os.environ.get("DIGESTGUARD_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("HOME") or Path.home()) / ".cache" / "digestguard"


def default_assets_dir() -> Path:
    """The directory ``hack/envtest-assets.sh`` builds into for the current versions."""
    k8s, etcd, _ = _versions()
    return cache_root() / "envtest" / f"k8s-{k8s}-etcd-{etcd}"


def _has_binaries(directory: Path, names: Sequence[str]) -> bool:
    return all(
        (directory / name).is_file() and os.access(directory / name, os.X_OK) for name in names
    )


def find_assets() -> Path | None:
    """The directory holding etcd, kube-apiserver and kube-controller-manager.

    ``KUBEBUILDER_ASSETS`` wins when it holds all three; otherwise the default
    cache directory of ``hack/envtest-assets.sh``; ``None`` when neither does.
    Nothing is built here.
    """
    candidates: list[Path] = []
    configured = os.environ.get("KUBEBUILDER_ASSETS")
    if configured:
        candidates.append(Path(configured))
    candidates.append(default_assets_dir())
    for candidate in candidates:
        if _has_binaries(candidate, CONTROL_PLANE_BINARIES):
            return candidate.resolve()
    return None


def find_helm(assets_dir: Path | None = None) -> Path | None:
    """helm next to the control-plane binaries, else in the script's cache, else on PATH."""
    _, _, helm_version = _versions()
    candidates = []
    if assets_dir is not None:
        candidates.append(Path(assets_dir) / "helm")
    candidates.append(default_assets_dir() / "helm")
    candidates.append(cache_root() / "envtest" / f"helm-{helm_version}" / "helm")
    for candidate in candidates:
        if _has_binaries(candidate.parent, [candidate.name]):
            return candidate
    on_path = shutil.which("helm")
    return Path(on_path) if on_path else None


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports, free on ``host`` a moment ago, that no outgoing
    connection takes (etcd and the apiserver must be told theirs: see ``ports``)."""
    return [ports.free_port(host) for _ in range(count)]


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the child when the process that started it dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


_PEM = serialization.Encoding.PEM


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class _Pki:
    """Throw-away key material, written as PEM files into ``directory``.

    ``ca``: signs the apiserver's serving certificate, is the client CA and the
    controller manager's root CA. ``front-proxy-ca`` / ``front-proxy-client``:
    the aggregation layer's request-header authentication, as kubeadm sets it
    up. ``sa``: the service-account token signing key.
    """

    def __init__(self, directory: Path, hosts: Sequence[str]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        now = dt.datetime.now(dt.UTC)
        self._not_before = now - dt.timedelta(minutes=5)
        self._not_after = now + dt.timedelta(days=7)

        ca_key, ca_cert = self._ca("digestguard-test-ca", "ca")
        self._leaf(
            "apiserver",
            "kube-apiserver",
            ca_key,
            ca_cert,
            x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
            sans=hosts,
        )
        proxy_key, proxy_cert = self._ca("digestguard-test-front-proxy-ca", "front-proxy-ca")
        self._leaf(
            "front-proxy-client",
            "front-proxy-client",
            proxy_key,
            proxy_cert,
            x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(self.path("sa.key"), _key_pem(sa_key))
        self.path("sa.pub").write_bytes(
            sa_key.public_key().public_bytes(_PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def path(self, name: str) -> Path:
        return self.directory / name

    def _ca(
        self, common_name: str, stem: str
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        self.path(f"{stem}.crt").write_bytes(cert.public_bytes(_PEM))
        _write_private(self.path(f"{stem}.key"), _key_pem(key))
        return key, cert

    def _leaf(
        self,
        stem: str,
        common_name: str,
        ca_key: ec.EllipticCurvePrivateKey,
        ca_cert: x509.Certificate,
        usage: x509.ObjectIdentifier,
        sans: Sequence[str] = (),
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if sans:
            names: list[x509.GeneralName] = []
            for host in sans:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        self.path(f"{stem}.crt").write_bytes(cert.public_bytes(_PEM))
        _write_private(self.path(f"{stem}.key"), _key_pem(key))


def _kubeconfig(server: str, ca_pem: bytes, user: str, token: str) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "digestguard-test",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {
                "name": "digestguard-test",
                "context": {"cluster": "digestguard-test", "user": user, "namespace": "default"},
            }
        ],
        "current-context": "digestguard-test",
        "preferences": {},
    }
    # JSON is valid YAML, and every kubeconfig reader accepts it.
    return json.dumps(config, indent=2) + "\n"


class _Process:
    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: IO[bytes], log_path: Path):
        self.name = name
        self.popen = popen
        self.log = log
        self.log_path = log_path
        self.stopped = False


# --------------------------------------------------------------------------
# The control plane
# --------------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on loopback.

    ``ControlPlane(assets_dir, work_dir).start()`` returns once the apiserver
    is ready, the controller manager is healthy and the ``default``
    ServiceAccount exists in namespace ``default`` (so pods can be created).
    ``stop()`` ends every process this object started, by pid; it is safe to
    call more than once, and the object is also a context manager.
    """

    def __init__(
        self,
        assets_dir: Path | str,
        work_dir: Path | str,
        *,
        start_timeout: float = 120.0,
        stop_timeout: float = 15.0,
        extra_apiserver_args: Sequence[str] = (),
        extra_controller_manager_args: Sequence[str] = (),
        die_with_parent: bool = True,
    ) -> None:
        self.assets_dir = Path(assets_dir).resolve()
        self.work_dir = Path(work_dir).resolve()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.extra_controller_manager_args = list(extra_controller_manager_args)
        self.die_with_parent = die_with_parent

        self.token = secrets.token_hex(24)
        self._controller_manager_token = secrets.token_hex(24)
        self.etcd_client_port = 0
        self.etcd_peer_port = 0
        self.apiserver_port = 0
        self.controller_manager_port = 0
        self._processes: list[_Process] = []
        self._started = False

        missing = [n for n in CONTROL_PLANE_BINARIES if not _has_binaries(self.assets_dir, [n])]
        if missing:
            raise ControlPlaneError(
                f"{self.assets_dir} lacks {', '.join(missing)}; run hack/envtest-assets.sh "
                "or point KUBEBUILDER_ASSETS at a directory that has them"
            )

    # -- public surface ----------------------------------------------------

    @property
    def server_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_client_port}"

    @property
    def kubeconfig_path(self) -> Path:
        """Admin kubeconfig (user in group ``system:masters``, token auth)."""
        return self.work_dir / "kubeconfig"

    @property
    def ca_path(self) -> Path:
        """The CA that signed the apiserver's serving certificate."""
        return self.work_dir / "pki" / "ca.crt"

    @property
    def ca_key_path(self) -> Path:
        """The CA's private key (for tests that need to issue certificates)."""
        return self.work_dir / "pki" / "ca.key"

    def log_path(self, name: str) -> Path:
        """``etcd``, ``kube-apiserver`` or ``kube-controller-manager``."""
        return self.work_dir / f"{name}.log"

    @property
    def pids(self) -> dict[str, int]:
        """The pid of every process this object started (running or not)."""
        return {p.name: p.popen.pid for p in self._processes}

    def binary(self, name: str) -> Path:
        return self.assets_dir / name

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        if self._started:
            raise ControlPlaneError("this ControlPlane was already started")
        self._started = True
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # A free port can be taken by another process before ours binds it: start
        # again on fresh ports rather than fail the whole session.
        for attempt in range(_PORT_ATTEMPTS):
            (
                self.etcd_client_port,
                self.etcd_peer_port,
                self.apiserver_port,
                self.controller_manager_port,
            ) = free_ports(4)
            try:
                self._start_etcd()
                self._start_apiserver()
                self._start_controller_manager()
                self.wait_for_service_account("default", "default")
            except ControlPlaneError as error:
                self.stop()
                if "address already in use" not in str(error) or attempt + 1 == _PORT_ATTEMPTS:
                    raise
                self._processes = []
                shutil.rmtree(self.work_dir / "etcd-data", ignore_errors=True)
                continue
            except BaseException:
                self.stop()
                raise
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """SIGTERM every process still running, SIGKILL those that outlast ``stop_timeout``."""
        processes = [p for p in self._processes if not p.stopped]
        # The controller manager and the apiserver first, etcd last so that the
        # apiserver can shut down cleanly against it.
        for group in (
            [p for p in processes if p.name != "etcd"],
            [p for p in processes if p.name == "etcd"],
        ):
            for proc in group:
                if proc.popen.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.popen.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            for proc in group:
                remaining = max(0.0, deadline - time.monotonic())
                try:
                    proc.popen.wait(timeout=remaining)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.popen.pid, signal.SIGKILL)
                    proc.popen.wait()
        for proc in processes:
            proc.stopped = True
            proc.log.close()

    def request(self, path: str, *, timeout: float = 10.0) -> Any:
        """GET ``path`` from the apiserver as the admin and decode the JSON."""
        req = urllib.request.Request(
            self.server_url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        context = ssl.create_default_context(cafile=str(self.ca_path))
        with urllib.request.urlopen(req, timeout=timeout, context=context) as response:
            return json.loads(response.read())

    def version(self) -> dict[str, str]:
        """The apiserver's ``/version`` document."""
        result: dict[str, str] = self.request("/version")
        return result

    def new_api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin; close it when done."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig_path))  # type: ignore[no-untyped-call]

    def wait_for_service_account(
        self, namespace: str, name: str = "default", *, timeout: float | None = None
    ) -> None:
        """Block until the ServiceAccount exists (pods need it to be admitted)."""
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}"

        def exists() -> bool:
            try:
                self.request(path)
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code == 404:
                    return False
                raise
            return True

        self._wait(
            f"ServiceAccount {namespace}/{name}",
            exists,
            "kube-controller-manager",
            timeout=timeout,
        )

    # -- start-up ----------------------------------------------------------

    def _spawn(self, name: str, args: Sequence[str]) -> _Process:
        log_path = self.log_path(name)
        log = log_path.open("ab")
        log.write(f"\n===== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(args)}\n".encode())
        log.flush()
        try:
            popen = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        except BaseException:
            log.close()
            raise
        proc = _Process(name, popen, log, log_path)
        self._processes.append(proc)
        return proc

    def _process(self, name: str) -> _Process | None:
        for proc in self._processes:
            if proc.name == name:
                return proc
        return None

    def _failure(self, name: str, what: str) -> ControlPlaneError:
        proc = self._process(name)
        state = ""
        if proc is not None and proc.popen.poll() is not None:
            state = f" ({name} exited with status {proc.popen.returncode})"
        log = self.log_path(name)
        return ControlPlaneError(f"{what}{state}; last lines of {log}:\n{_tail(log)}")

    def _wait(
        self,
        what: str,
        ready: Callable[[], bool],
        owner: str,
        *,
        timeout: float | None = None,
    ) -> None:
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        last_error = ""
        delay = 0.05
        while True:
            for proc in self._processes:
                if proc.popen.poll() is not None:
                    raise self._failure(proc.name, f"{proc.name} died while waiting for {what}")
            try:
                if ready():
                    return
            except (OSError, ValueError, urllib.error.URLError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                detail = f" (last error: {last_error})" if last_error else ""
                raise self._failure(owner, f"timed out waiting for {what}{detail}")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    @staticmethod
    def _http_ok(
        url: str, *, context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None
    ) -> tuple[bool, bytes]:
        req = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5, context=context) as response:
                return response.status == 200, response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            exc.close()
            return False, body

    def _start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        data_dir = self.work_dir / "etcd-data"
        shutil.rmtree(data_dir, ignore_errors=True)  # a fresh cluster every start
        data_dir.mkdir(mode=0o700)
        self._spawn(
            "etcd",
            [
                str(self.binary("etcd")),
                "--name=digestguard",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=digestguard={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            ok, body = self._http_ok(self.etcd_url + "/health")
            return ok and json.loads(body).get("health") == "true"

        self._wait("etcd /health", healthy, "etcd")

    def _start_apiserver(self) -> None:
        pki = _Pki(
            self.work_dir / "pki",
            hosts=[
                "127.0.0.1",
                "localhost",
                str(next(ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE).hosts())),
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        tokens = self.work_dir / "tokens.csv"
        _write_private(
            tokens,
            (
                f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
                f"{self._controller_manager_token},{CONTROLLER_MANAGER_USER},"
                f"{CONTROLLER_MANAGER_USER}\n"
            ).encode(),
        )
        ca_pem = pki.path("ca.crt").read_bytes()
        self.kubeconfig_path.write_text(
            _kubeconfig(self.server_url, ca_pem, ADMIN_USER, self.token)
        )
        self.kubeconfig_path.chmod(0o600)
        (self.work_dir / "kube-controller-manager.kubeconfig").write_text(
            _kubeconfig(
                self.server_url, ca_pem, CONTROLLER_MANAGER_USER, self._controller_manager_token
            )
        )

        self._spawn(
            "kube-apiserver",
            [
                str(self.binary("kube-apiserver")),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.work_dir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.path('apiserver.crt')}",
                f"--tls-private-key-file={pki.path('apiserver.key')}",
                f"--client-ca-file={pki.path('ca.crt')}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=Node,RBAC",
                "--anonymous-auth=false",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.path('sa.pub')}",
                f"--service-account-signing-key-file={pki.path('sa.key')}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # The aggregation layer, as kubeadm configures it.
                f"--requestheader-client-ca-file={pki.path('front-proxy-ca.crt')}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-uid-headers=X-Remote-Uid",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.path('front-proxy-client.crt')}",
                f"--proxy-client-key-file={pki.path('front-proxy-client.key')}",
                "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
                # A loopback advertise address is not a valid Endpoints IP, so
                # the "kubernetes" Service gets no endpoints instead of a
                # reconcile error every few seconds.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
                *self.extra_apiserver_args,
            ],
        )
        context = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
        headers = {"Authorization": f"Bearer {self.token}"}

        def ready() -> bool:
            ok, _ = self._http_ok(self.server_url + "/readyz", context=context, headers=headers)
            return ok

        self._wait("kube-apiserver /readyz", ready, "kube-apiserver")

    def _start_controller_manager(self) -> None:
        kubeconfig = self.work_dir / "kube-controller-manager.kubeconfig"
        pki_dir = self.work_dir / "pki"
        self._spawn(
            "kube-controller-manager",
            [
                str(self.binary("kube-controller-manager")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.controller_manager_port}",
                f"--cert-dir={self.work_dir / 'kube-controller-manager-certs'}",
                "--leader-elect=false",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki_dir / 'sa.key'}",
                f"--root-ca-file={pki_dir / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki_dir / 'ca.crt'}",
                f"--cluster-signing-key-file={pki_dir / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--profiling=false",
                "--v=1",
                *self.extra_controller_manager_args,
            ],
        )
        # Its serving certificate is self-signed in --cert-dir; /healthz is
        # open to anyone (--authorization-always-allow-paths default).
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        url = f"https://127.0.0.1:{self.controller_manager_port}/healthz"

        def healthy() -> bool:
            ok, _ = self._http_ok(url, context=insecure)
            return ok

        self._wait("kube-controller-manager /healthz", healthy, "kube-controller-manager")
