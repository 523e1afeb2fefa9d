"""A stand-in for a Kubernetes Service in front of webhook processes on loopback.

kube-proxy sends each new TCP connection to a Service to one of its ready endpoints
and leaves a connection with the endpoint it got until either side closes it; an
endpoint stops getting new connections once its readiness probe fails and the
endpoints change. `ServiceProxy` does the same on one loopback port: it polls every
backend's `/readyz`, sends each new connection to the next ready backend in turn and
copies bytes both ways (TLS passes through: the apiserver talks to the webhook).

It counts what a test asserts on: connections per backend, and connections that
found no ready backend (which the apiserver sees as a failed call).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections import Counter
from typing import Self

from tests.support import webhook_process

PROBE_INTERVAL = 0.1
"""How often each backend's readiness is asked (endpoints follow readiness in ~1 s)."""


@dataclasses.dataclass(frozen=True)
class Backend:
    """One webhook process: where admissions go and where it says whether it is ready."""

    port: int
    health_port: int

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"


class ServiceProxy:
    """`with ServiceProxy() as proxy:` listens on `proxy.port`; `proxy.backends = [...]`."""

    def __init__(self) -> None:
        self.port = 0
        self.routed: Counter[str] = Counter()
        """Backend name → connections sent to it."""
        self.unrouted = 0
        """Connections closed at once because no backend was ready (or reachable)."""
        self._backends: list[Backend] = []
        self._ready: list[Backend] = []
        self._turn = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="service-proxy", daemon=True)
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._prober = threading.Thread(target=self._probe, name="service-probe", daemon=True)
        self._server: asyncio.Server | None = None
        self._start_error: BaseException | None = None

    @property
    def backends(self) -> list[Backend]:
        with self._lock:
            return list(self._backends)

    @backends.setter
    def backends(self, backends: list[Backend]) -> None:
        with self._lock:
            self._backends = list(backends)
            # A backend that is gone gets no new connection even before the next probe.
            self._ready = [b for b in self._ready if b in self._backends]

    @property
    def ready(self) -> list[Backend]:
        with self._lock:
            return list(self._ready)

    def start(self) -> Self:
        self._thread.start()
        self._started.wait(30)
        if self._start_error is not None:
            raise RuntimeError(f"the service proxy did not start: {self._start_error}")
        self._prober.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._prober.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _probe(self) -> None:
        while not self._stopping.is_set():
            ready = [
                backend for backend in self.backends if webhook_process.ready(backend.health_port)
            ]
            with self._lock:
                self._ready = [b for b in ready if b in self._backends]
            self._stopping.wait(PROBE_INTERVAL)

    def _next(self) -> Backend | None:
        with self._lock:
            if not self._ready:
                return None
            self._turn += 1
            return self._ready[self._turn % len(self._ready)]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._connection, "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as error:  # reported by start()
            self._start_error = error
            self._started.set()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            with contextlib.suppress(BaseException):
                self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = self._next()
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        if backend is not None:
            with contextlib.suppress(OSError):
                upstream = await asyncio.open_connection("127.0.0.1", backend.port)
        if backend is None or upstream is None:
            self.unrouted += 1
            writer.close()
            return
        self.routed[backend.name] += 1
        backend_reader, backend_writer = upstream
        await asyncio.gather(
            _copy(reader, backend_writer), _copy(backend_reader, writer), return_exceptions=True
        )
        for side in (writer, backend_writer):
            side.close()


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Bytes from `source` to `sink` until `source` ends; then half-close `sink`.

    A reset on either side ends the whole connection: both sides are aborted, as a
    DNAT'd TCP connection carries the reset through."""
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except (ConnectionError, OSError):
        sink.transport.abort()
        raise
