"""HTTPS serving of admission reviews, and the plain-HTTP health and metrics endpoints.

`AdmissionServer` is a webhook server in kopf's sense (called with kopf's webhook
function, yields client configs) but does not import kopf. It exists because the
stock server answers `allowed: true` to paths that name no handler, caps bodies at
1 MiB, and cannot reload certificates that are renewed in place.

It is in front of every pod creation with `failurePolicy: Fail`, so it bounds what
any client can make it do:

- at most `max_inflight` admissions at once; the next one is refused at once
  (HTTP 429), and the apiserver applies the webhook's failurePolicy; of those, at
  most `max_deciding` being decided (not waiting on a registry): the next waits up
  to `TURN_WAIT` for one to finish, then is refused;
- the apiserver's own deadline (the `timeout` query parameter) ends the work: the
  answer is sent before it, and a handler whose client went away is cancelled;
- at most `max_connections` connections, counted from the moment one is accepted: one
  over the limit is reset before any TLS work (a handshake costs about 1 ms of CPU, and
  a burst of reconnects would otherwise starve the admissions); a request must arrive
  whole within `request_read_timeout` of its first byte; the TLS handshake has a
  deadline too;
- only `application/json` in identity encoding is read (the apiserver sends
  nothing else), so a compressed body is never inflated.

The health server runs on a thread and event loop of its own: probes are answered
promptly however busy the admission loop is.
"""

import asyncio
import collections
import contextlib
import contextvars
import ctypes
import email.utils
import functools
import json
import logging
import os
import re
import socket
import ssl
import struct
import threading
import time
from asyncio import sslproto
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

import aiohttp.web

from webhook import errors, metrics, names
from webhook.core import text
from webhook.serving import reviews

logger = logging.getLogger("digestguard.serving")

DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
DEFAULT_MAX_INFLIGHT: Final = 200
"""Admissions answered at once by one process. A warm admission costs about 1 ms of
CPU, so 200 in flight is well over what a core sustains within a second; the rest
wait on the registry, which the resolver bounds by its deadline."""
DEFAULT_MAX_DECIDING: Final = 32
"""Admissions being decided at once (their body read, not waiting on a registry).

A warm admission is ~1 ms of CPU spread over several turns of the event loop, and
every turn runs a step of each admission being decided: with hundreds at once each
took hundreds of milliseconds, and at 4x the sustainable rate none was answered
within a second. 32 keeps a turn to a few milliseconds; admissions waiting on a
registry do not count (they cost nothing meanwhile), so cold bursts are not refused."""
TURN_WAIT: Final = 0.05
"""Seconds an admission over `max_deciding` waits for one to finish before its 429:
room for a burst (a ReplicaSet's batch of pods) without queueing under overload."""
DEFAULT_SHED_LAG: Final = 0.005
"""Seconds the event loop may lag behind, for `SHED_AFTER` in a row, before new
admissions are refused at once. A warm admission is decided in one step of the loop,
so under overload the queue is not in this process but in the sockets: how late the
loop runs is how long each request has waited. At 5 ms what is served keeps a p99
near 10 ms; a refusal made before aiohttp parses the request costs little beside an
admission, so refusing brings the lag back down and refusals are answered within
milliseconds (the `overload` benchmark)."""
SHED_AFTER: Final = 0.2
"""Seconds, and at least `SHED_SAMPLES` samples, the lag must last: a garbage
collection or a burst lags the loop once, a standing queue keeps it lagging."""
SHED_SAMPLES: Final = 3
SHED_CPU_SHARE: Final = 0.5
"""Share of a core the event loop's thread must have used while lagging for the lag to
be its own doing."""
OVERLOAD_HOLD: Final = 1.0
"""Seconds without a lagging measurement after which a replica is no longer overloaded."""
LAG_PROBE: Final = 0.005
"""Seconds between two measurements of the event loop's lag."""
DEFAULT_MAX_CONNECTIONS: Final = 400
"""Twice the admissions answered at once: room for the apiservers' idle keep-alive
connections beside the busy ones. Each connection over the admissions in flight can
only queue a request to be refused; bounding them bounds how long a refusal waits
(every ready connection is read in each turn of the event loop)."""
DEFAULT_REQUEST_READ_TIMEOUT: Final = 10.0
DEFAULT_KEEPALIVE_TIMEOUT: Final = 120.0
"""Longer than the 90 s after which Go's HTTP client (the apiserver's) drops an idle
connection: the client closes first, so it never sends on a connection we are closing."""
TLS_HANDSHAKE_TIMEOUT: Final = 10
TLS_READ_BUFFER: Final = 32 * 1024
"""Bytes of TLS records read at once per connection. asyncio's default, 256 KiB, made
every open connection cost ~280 KiB (1,000 connections: 270 MiB, kept after they
closed); a TLS record is at most 16 KiB, so a larger buffer buys nothing here."""
BURST_OVER: Final = 50
"""Connections plus admissions, fewer now than at the busiest since the last check,
after which freed memory is given back to the system."""
ANSWER_MARGIN: Final = 0.25
"""Seconds before the apiserver's deadline by which the answer is sent."""
LARGE: Final = 256 * 1024
"""Bytes of a review (or of its patch) above which it is decoded and encoded in a thread."""
HANDLED_OPERATIONS: Final = frozenset({"CREATE", "UPDATE"})

REQUEST_DEADLINE: Final[contextvars.ContextVar[float | None]] = contextvars.ContextVar(
    "digestguard_request_deadline", default=None
)
"""When (`time.monotonic()`) the admission being answered must have its answer sent."""

_GO_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


class ReviewFn(Protocol):
    """kopf's `WebhookFn`: the framework function that runs the handler for a path."""

    def __call__(
        self,
        request: Any,
        *,
        webhook: str | None = None,
        headers: Mapping[str, str] | None = None,
        sslpeer: Mapping[str, Any] | None = None,
    ) -> Awaitable[Any]: ...


class AdmissionServer:
    def __init__(
        self,
        *,
        address: str,
        port: int,
        certfile: str | None,
        keyfile: str | None,
        answer_within: float,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_deciding: int = DEFAULT_MAX_DECIDING,
        waiting_on_registry: Callable[[], int] = lambda: 0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        request_read_timeout: float = DEFAULT_REQUEST_READ_TIMEOUT,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
        reload_interval: float = 10.0,
        shed_lag: float = DEFAULT_SHED_LAG,
    ) -> None:
        self.address = address
        self.port = port
        self.certfile = certfile
        self.keyfile = keyfile
        self.answer_within = answer_within
        self.max_body_bytes = max_body_bytes
        self.max_inflight = max_inflight
        self.max_deciding = max_deciding
        self._waiting_on_registry = waiting_on_registry
        self._deciding = 0
        self._turns: collections.deque[asyncio.Future[None]] = collections.deque()
        self.max_connections = max_connections
        self.request_read_timeout = request_read_timeout
        self.keepalive_timeout = keepalive_timeout
        self.reload_interval = reload_interval
        self.listening = asyncio.Event()
        self.bound_port: int | None = None
        self._context: ssl.SSLContext | None = None
        self._loaded_stamp: tuple[int, ...] | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False
        self._connections: set[_Connection] = set()
        self._accepted = 0
        """Connections accepted and not yet lost, including those still in their handshake."""
        self._high_water = 0
        """Most connections plus admissions in flight at once since memory was last given back."""
        self._site: _Site | None = None
        self.shed_lag = shed_lag
        """Event-loop lag, in seconds, past which admissions are shed (0: never)."""
        self.shedding = False
        """Whether admissions are refused now (see `observe_lag`)."""
        self._overloaded_until: float | None = None
        self._probe_due = 0.0
        """When (by `_clock`) the next lag measurement is due."""
        self._clock: Callable[[], float] = time.monotonic
        """The event loop's clock, once the lag is being measured."""
        self._lagging_since: float | None = None
        self._lagging_cpu = 0.0
        self._lagging_samples = 0

    async def __call__(self, fn: ReviewFn) -> AsyncIterator[dict[str, Any]]:
        app = aiohttp.web.Application(client_max_size=self.max_body_bytes)

        async def handle(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
            return await self._handle(request, fn)

        app.router.add_route("*", "/{path:.*}", handle)
        runner = aiohttp.web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            # A handler whose client hung up stops: nobody is waiting for its answer.
            handler_cancellation=True,
            keepalive_timeout=self.keepalive_timeout,
            # Never inflate a body: the apiserver does not compress AdmissionReviews.
            auto_decompress=False,
        )
        await runner.setup()
        try:
            context = await self._wait_for_context() if self.certfile else None
            self._site = _Site(runner, self, self.address, self.port, context)
            await self._site.start()
            self.bound_port = _bound_port(runner) or self.port
            self.listening.set()
            scheme = "https" if context else "http"
            logger.info(
                "serving admission reviews",
                extra={"url": f"{scheme}://{self.address}:{self.bound_port}"},
            )
            lag = asyncio.create_task(self._watch_lag(), name="digestguard-loop-lag")
            try:
                yield {"url": f"{scheme}://{self.address}:{self.bound_port}"}
                while True:
                    await asyncio.sleep(self.reload_interval)
                    self.reload_if_changed()
                    self.give_back_memory_after_a_burst()
            finally:
                lag.cancel()
        finally:
            self.listening.clear()
            self.begin_draining()
            await self.stop_listening()
            self.close_idle_connections()
            await self.drain(within=self.answer_within + 1.0)
            await runner.cleanup()

    @property
    def connections(self) -> int:
        """Client connections open now."""
        return len(self._connections)

    def _accept(self) -> bool:
        """Take a slot for a connection being accepted; False when all are taken."""
        if self._accepted >= self.max_connections:
            metrics.CONNECTIONS_REFUSED.inc()
            return False
        self._accepted += 1
        self._note_load()
        metrics.CONNECTIONS.set(self._accepted)
        return True

    def _release(self) -> None:
        self._accepted -= 1
        metrics.CONNECTIONS.set(self._accepted)

    def begin_draining(self) -> None:
        """Close each connection after its next answer, so clients reconnect elsewhere."""
        self._draining = True

    async def stop_listening(self) -> None:
        """Accept no new connection; the open ones are answered as before."""
        if self._site is not None:
            site, self._site = self._site, None
            await site.stop()

    def close_idle_connections(self) -> int:
        """Close every connection with no request on it; how many were closed."""
        return sum(connection.close_if_idle() for connection in list(self._connections))

    async def drain(self, within: float) -> None:
        """Wait until no admission is in flight (or `within` seconds pass)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), within)

    async def _watch_lag(self) -> None:
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        while True:
            self._probe_due = due = loop.time() + LAG_PROBE
            await asyncio.sleep(LAG_PROBE)
            now = loop.time()
            self.observe_lag(now - due, now, time.thread_time())

    def sheds(self) -> bool:
        """Whether an admission arriving now is refused: the replica is overloaded and
        the loop lags, by its last measurement or by how overdue the next one is (the
        lag can rise between two measurements, and a refusal should not wait for it)."""
        if self._overloaded_until is None:
            return False
        return self.shedding or self._clock() - self._probe_due > self.shed_lag

    def observe_lag(self, lag: float, now: float, cpu: float) -> None:
        """Take one measurement: the event loop ran `lag` seconds late at `now` (loop
        time), when its thread had used `cpu` seconds of CPU.

        The replica is overloaded once the loop has lagged past `shed_lag` at every
        measurement for `SHED_AFTER` while the loop's own thread kept at least half a
        core busy. A lag while that thread mostly waited is not from admissions: the
        node is busy, or another thread holds the GIL (a big policy being indexed, a
        pod of thousands of containers being decided), and refusing would not help.

        Overloaded, each admission is refused while the last measurement lags (or the
        next is overdue: `sheds`), so the lag hovers near `shed_lag` and what is served
        is what the core can serve promptly; the state ends after `OVERLOAD_HOLD` with
        no lag."""
        metrics.LOOP_LAG.set(lag)
        lagging = bool(self.shed_lag) and lag > self.shed_lag
        if self._overloaded_until is not None:
            self.shedding = lagging
            if lagging:
                self._overloaded_until = now + OVERLOAD_HOLD
            elif now >= self._overloaded_until:
                self._overloaded_until = None
                metrics.SHEDDING.set(0)
                logger.info("admissions no longer shed", extra={"lag_ms": round(lag * 1000, 1)})
            return
        if not lagging:
            self._lagging_since = None
            return
        if self._lagging_since is None:
            self._lagging_since, self._lagging_cpu, self._lagging_samples = now, cpu, 0
        self._lagging_samples += 1
        held = now - self._lagging_since
        if (
            self._lagging_samples >= SHED_SAMPLES
            and held >= SHED_AFTER
            and (cpu - self._lagging_cpu) / held >= SHED_CPU_SHARE
        ):
            self._overloaded_until = now + OVERLOAD_HOLD
            self._lagging_since = None
            self.shedding = True
            metrics.SHEDDING.set(1)
            logger.warning(
                "shedding admissions: the event loop lags behind",
                extra={
                    "lag_ms": round(lag * 1000, 1),
                    "for_ms": round(held * 1000),
                    "limit_ms": round(self.shed_lag * 1000, 1),
                },
            )

    def _note_load(self) -> None:
        self._high_water = max(self._high_water, self._inflight + self._accepted)

    def give_back_memory_after_a_burst(self) -> bool:
        """Return freed heap to the system once a burst of connections or admissions is over.

        Each connection and admission allocates buffers; when a burst ends, Python frees
        them but glibc keeps the pages (measured: 1,000 TLS connections opened and closed
        left 57 MiB resident; `malloc_trim` gave back 52). A replica that took a burst
        would otherwise stay that much nearer its memory limit."""
        now = self._inflight + self._accepted
        if self._high_water - now < BURST_OVER:
            return False
        self._high_water = now
        return _trim_heap()

    def reload_if_changed(self) -> bool:
        """Load the certificate files again if they changed; new handshakes use them."""
        if self._context is None or not self.certfile or not self.keyfile:
            return False
        stamp = _stamp(self.certfile, self.keyfile)
        if stamp is None or stamp == self._loaded_stamp:
            return False
        try:
            self._context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as error:
            # Half-written files (cert renewed, key not yet): keep serving the old pair.
            logger.warning(
                "certificate reload failed; keeping the old one", extra={"error": str(error)}
            )
            return False
        self._loaded_stamp = stamp
        logger.info("certificate reloaded", extra={"certfile": self.certfile})
        return True

    async def _wait_for_context(self) -> ssl.SSLContext:
        certfile, keyfile = self.certfile or "", self.keyfile or ""
        while True:
            stamp = _stamp(certfile, keyfile)
            if stamp is not None:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                try:
                    context.load_cert_chain(certfile, keyfile)
                except (OSError, ssl.SSLError) as error:
                    logger.warning("certificate not loadable yet", extra={"error": str(error)})
                else:
                    self._context, self._loaded_stamp = context, stamp
                    return context
            await asyncio.sleep(0.5)

    async def _handle(self, http: aiohttp.web.Request, fn: ReviewFn) -> aiohttp.web.StreamResponse:
        started = time.perf_counter()
        connection = _connection_of(http)
        if connection is not None:
            connection.active += 1
        try:
            response = await self._answer(http, fn, started)
        finally:
            if connection is not None:
                connection.active -= 1
                # Answered, body read or not (a refusal may not read it): the request
                # timer stops, and the connection is idle again.
                connection.request_read()
        if self._draining:
            response.force_close()
        return response

    async def _answer(
        self, http: aiohttp.web.Request, fn: ReviewFn, started: float
    ) -> aiohttp.web.StreamResponse:
        handler_id = http.match_info.get("path", "")
        if http.method != "POST":
            return _json(405, reviews.refusal("", 405, "admission reviews are POSTed"))
        if handler_id not in names.ROUTES:
            message = (
                f"no admission handler at /{_clip(handler_id)}; "
                f"handlers: {', '.join(names.ALL_HANDLERS)}"
            )
            return _json(404, reviews.refusal("", 404, message))
        unreadable = _unreadable_body(http)
        if unreadable:
            metrics.ADMISSIONS_REFUSED.labels("unsupported-body").inc()
            return _json(415, reviews.refusal("", 415, unreadable))
        if self.sheds():
            _OVERLOADED.inc()
            return _shed()
        if self._inflight >= self.max_inflight:
            _OVERLOADED.inc()
            message = (
                f"digestguard is answering {self._inflight} admissions already (its limit);"
                " this one is refused rather than queued"
            )
            return _json(429, reviews.refusal("", 429, message))
        budget = self.answer_within
        apiserver_timeout = _go_duration(http.query.get("timeout", ""))
        if apiserver_timeout is not None:
            budget = min(budget, apiserver_timeout - ANSWER_MARGIN)
        self._inflight += 1
        self._note_load()
        self._idle.clear()
        token = REQUEST_DEADLINE.set(time.monotonic() + budget)
        try:
            status, response = await self._review(http, fn, handler_id, budget)
        finally:
            REQUEST_DEADLINE.reset(token)
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
        payload = response.get("response", {})
        decision = (
            "denied"
            if not payload.get("allowed")
            else "mutated"
            if payload.get("patch")
            else "allowed"
        )
        metrics.ADMISSIONS.labels(handler_id, decision).inc()
        metrics.ADMISSION_SECONDS.labels(handler_id).observe(time.perf_counter() - started)
        if (http.content_length or 0) > LARGE or len(payload.get("patch") or "") > LARGE:
            return await asyncio.to_thread(_json, status, response)
        return _json(status, response)

    async def _review(
        self, http: aiohttp.web.Request, fn: ReviewFn, handler_id: str, budget: float
    ) -> tuple[int, Any]:
        if budget <= 0:
            message = "the apiserver's timeout leaves no time to decide"
            return 200, reviews.refusal("", 504, message)
        deadline = time.monotonic() + budget
        try:
            # A timeout scope, not `wait_for`: no task of its own and no extra turns of
            # the event loop for a body that is already buffered (the usual case).
            async with asyncio.timeout(min(budget, self.request_read_timeout)):
                body = await http.read()
        except aiohttp.web.HTTPRequestEntityTooLarge:
            message = f"the AdmissionReview is larger than {self.max_body_bytes} bytes"
            return 413, reviews.refusal("", 413, message)
        except TimeoutError:
            metrics.ADMISSIONS_REFUSED.labels("slow-body").inc()
            return 408, reviews.refusal("", 408, "the AdmissionReview did not arrive in time")
        connection = _connection_of(http)
        if connection is not None:
            connection.request_read()
        # Before the body is decoded: a refusal costs as little as it can.
        if not await self._take_turn():
            _OVERLOADED.inc()
            message = (
                f"digestguard is deciding {self.max_deciding} admissions already (its limit)"
                " and none finished in time; this one is refused rather than queued"
            )
            return 429, reviews.refusal("", 429, message)
        self._deciding += 1
        try:
            return await self._decide(http, fn, handler_id, budget, deadline, body)
        finally:
            self._deciding -= 1
            self._next_turn()

    async def _decide(
        self,
        http: aiohttp.web.Request,
        fn: ReviewFn,
        handler_id: str,
        budget: float,
        deadline: float,
        body: bytes,
    ) -> tuple[int, Any]:
        try:
            # A review of megabytes (a pod of thousands of containers) is parsed in a
            # thread: tens of milliseconds the event loop spends on other admissions.
            raw = (
                await asyncio.to_thread(json.loads, body) if len(body) > LARGE else json.loads(body)
            )
        except (ValueError, UnicodeDecodeError) as error:
            return 400, reviews.refusal("", 400, f"the body is not valid JSON: {_clip(error)}")
        except RecursionError:
            return 400, reviews.refusal("", 400, "the body is nested too deeply to be a review")
        try:
            request = reviews.check(raw)
        except errors.InvalidReview as error:
            message = f"malformed AdmissionReview: {_clip(error)}"
            return 400, reviews.refusal(error.uid, 400, message)
        route = (request.group, request.resource, request.subresource)
        if route not in names.ROUTES[handler_id]:
            what = f"{request.resource}.{request.group or 'core'}"
            if request.subresource:
                what += f"/{request.subresource}"
            message = (
                f"the webhook path /{handler_id} does not handle {_clip(what)}; the webhook"
                " configuration routes this resource to the wrong path"
            )
            return 200, reviews.refusal(request.uid, 400, message)
        if request.operation not in HANDLED_OPERATIONS:
            return 200, {
                "apiVersion": reviews.API_VERSION,
                "kind": reviews.KIND,
                "response": {"uid": request.uid, "allowed": True},
            }
        # The apiserver may leave metadata.namespace empty on CREATE; handlers need it.
        for field in ("object", "oldObject"):
            obj = raw["request"].get(field)
            if obj is not None and request.namespace:
                metadata = obj.setdefault("metadata", {})
                if isinstance(metadata, dict) and not metadata.get("namespace"):
                    metadata["namespace"] = request.namespace
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                response = await fn(raw, webhook=handler_id, headers=http.headers, sslpeer={})
        except TimeoutError:
            message = f"digestguard could not decide within {budget:.1f}s"
            logger.error("admission timed out", extra={"uid": request.uid, "handler": handler_id})
            return 200, reviews.refusal(request.uid, 504, message)
        except RecursionError:
            message = "the object is nested too deeply to be decided"
            return 200, reviews.refusal(request.uid, 400, message)
        except Exception as error:
            logger.exception("admission failed", extra={"uid": request.uid, "handler": handler_id})
            return 200, reviews.refusal(request.uid, 500, f"digestguard failed: {_clip(error)}")
        return 200, response

    def _busy(self) -> bool:
        return self._deciding - self._waiting_on_registry() >= self.max_deciding

    async def _take_turn(self) -> bool:
        """Whether this admission may be decided now, after waiting up to `TURN_WAIT`.

        When as many already wait as are being decided, the queue is standing, not a
        burst: refused at once, since waiting would only end in the same refusal."""
        if not self._busy():
            return True
        if len(self._turns) >= self.max_deciding:
            return False
        loop = asyncio.get_running_loop()
        until = loop.time() + TURN_WAIT
        while (left := until - loop.time()) > 0:
            turn: asyncio.Future[None] = loop.create_future()
            self._turns.append(turn)
            try:
                await asyncio.wait_for(turn, left)
            except TimeoutError:
                pass
            finally:
                with contextlib.suppress(ValueError):
                    self._turns.remove(turn)
            if not self._busy():
                return True
        return False

    def _next_turn(self) -> None:
        """Wake the admission that has waited longest for a turn."""
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(None)
                return


class HealthServer:
    """Plain HTTP for the kubelet's probes and Prometheus: /healthz, /readyz, /metrics.

    It runs on a thread with an event loop of its own, so a probe is answered within
    a few milliseconds even while the admission loop is saturated: a liveness probe
    must not restart a replica because it is busy. `readiness` is called on that
    thread and must only read state.
    """

    def __init__(self, *, address: str, port: int, readiness: Callable[[], list[str]]) -> None:
        self.address = address
        self.port = port
        self.readiness = readiness
        self.bound_port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None

    async def start(self) -> None:
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        caller = asyncio.get_running_loop()

        def report(port: int | BaseException) -> None:
            if started.done():
                return
            if isinstance(port, BaseException):
                started.set_exception(port)
            else:
                started.set_result(port)

        def serve() -> None:
            try:
                asyncio.run(self._serve(lambda port: caller.call_soon_threadsafe(report, port)))
            except BaseException as error:  # reported to start(); the thread ends
                caller.call_soon_threadsafe(report, error)

        self._thread = threading.Thread(target=serve, name="digestguard-health", daemon=True)
        self._thread.start()
        self.bound_port = await started

    async def stop(self) -> None:
        loop, stopped, thread = self._loop, self._stopped, self._thread
        if loop is None or stopped is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # its loop already ended
            loop.call_soon_threadsafe(stopped.set)
        await asyncio.to_thread(thread.join)

    async def _serve(self, report: Callable[[int], Any]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        app = aiohttp.web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = aiohttp.web.TCPSite(runner, self.address, self.port, reuse_address=True)
            await site.start()
            report(_bound_port(runner) or self.port)
            await self._stopped.wait()
        finally:
            await runner.cleanup()

    async def _healthz(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        # Answering at all proves the process is alive.
        return aiohttp.web.Response(text="ok\n")

    async def _readyz(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        waiting = self.readiness()
        if waiting:
            return aiohttp.web.Response(
                status=503, text="".join(f"waiting: {w}\n" for w in waiting)
            )
        return aiohttp.web.Response(text="ready\n")

    async def _metrics(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        body, content_type = metrics.exposition()
        return aiohttp.web.Response(body=body, headers={"Content-Type": content_type})


class _Connection(asyncio.Protocol):
    """One client connection: aiohttp's protocol inside, this server's limits around it.

    Its first request, and after that each request from its first byte, must arrive whole within
    `request_read_timeout`, or the connection is closed: a client that opens
    connections and sends nothing, or one byte every few seconds, cannot hold them.
    Between requests aiohttp's keep-alive timeout applies.
    """

    def __init__(self, server: AdmissionServer, inner: asyncio.Protocol, *, counted: bool) -> None:
        self._server = server
        self._inner = inner
        self._counted = counted
        """This protocol, not a TLS layer under it, gives the connection's slot back."""
        self._transport: asyncio.Transport | None = None
        self._reading: asyncio.TimerHandle | None = None
        self._partial = False
        """Bytes of a request have arrived, but not the whole request yet."""
        self.active = 0
        """Requests on this connection whose answer is being made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a stream server's transport
        self._transport = transport
        self._server._connections.add(self)
        self._reading = asyncio.get_running_loop().call_later(
            self._server.request_read_timeout, self._too_slow
        )
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if (
            self._server.sheds()
            and self.active == 0
            and not self._partial
            and not self._server._draining
            and self._transport is not None
            and _whole_request(data)
        ):
            # Overloaded: a request that came whole is refused here, never parsed by
            # aiohttp nor given a task. What is left of its cost is TLS.
            _OVERLOADED.inc()
            self._transport.write(_shed_answer(int(time.time())))
            return
        if self._reading is None and self.active == 0:
            self._reading = asyncio.get_running_loop().call_later(
                self._server.request_read_timeout, self._too_slow
            )
        self._partial = self.active == 0
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_reading()
        if self._counted:
            self._server._release()
        self._server._connections.discard(self)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def request_read(self) -> None:
        """The request being answered has arrived whole."""
        self._partial = False
        self._stop_reading()

    def close_if_idle(self) -> bool:
        if self.active or self._partial or self._transport is None:
            return False
        self._transport.close()
        return True

    def _stop_reading(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None

    def _too_slow(self) -> None:
        self._reading = None
        metrics.CONNECTIONS_TIMED_OUT.inc()
        logger.warning(
            "closing a connection whose request did not arrive in time",
            extra={"within": self._server.request_read_timeout},
        )
        if self._transport is not None:
            self._transport.abort()


class _Site(aiohttp.web.BaseSite):
    """A TCP site whose connections go through `_Connection`, with a TLS handshake deadline."""

    def __init__(
        self,
        runner: aiohttp.web.AppRunner,
        server: AdmissionServer,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._admission = server
        self._host = host
        self._port = port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        handlers = self._runner.server
        assert handlers is not None  # set by runner.setup()
        admission, context = self._admission, self._ssl_context
        loop = asyncio.get_running_loop()

        def connection() -> asyncio.BaseProtocol:
            # Called as each connection is accepted, before a byte of TLS is exchanged.
            if not admission._accept():
                return _Reset()
            if context is None:
                return _Connection(admission, handlers(), counted=True)
            return _TLS(loop, _Connection(admission, handlers(), counted=False), context, admission)

        # TLS is layered here, not by create_server(ssl=...): that would handshake
        # before the limit could refuse the connection.
        self._server = await loop.create_server(
            connection, self._host, self._port, reuse_address=True
        )


class _Reset(asyncio.Protocol):
    """A connection over the limit: reset (RST, not FIN) as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a stream server's transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


class _TLS(sslproto.SSLProtocol):
    """asyncio's TLS layer with a small read buffer; gives the slot back when the
    connection is lost, whether or not its handshake finished."""

    max_size = TLS_READ_BUFFER

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        app: _Connection,
        context: ssl.SSLContext,
        server: AdmissionServer,
    ) -> None:
        # Told when the handshake ends; a failed one needs nothing more than the close
        # the layer does itself, so its error is only collected.
        handshake: asyncio.Future[None] = loop.create_future()
        handshake.add_done_callback(lambda done: done.cancelled() or done.exception())
        super().__init__(
            loop,
            app,
            context,
            handshake,
            server_side=True,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
        )
        self._admission = server
        self._released = False

    def connection_lost(self, exc: BaseException | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            if not self._released:
                self._released = True
                self._admission._release()


def _connection_of(http: aiohttp.web.Request) -> _Connection | None:
    transport = http.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, _Connection) else None


def _unreadable_body(http: aiohttp.web.Request) -> str:
    """Why the body will not be read, judged from the headers alone; empty when it will."""
    if http.content_type != "application/json":
        return (
            f"an AdmissionReview is application/json, not {_clip(http.content_type or 'untyped')}"
        )
    encoding = http.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return f"a compressed body ({_clip(encoding)}) is not accepted"
    return ""


def _go_duration(text: str) -> float | None:
    """Seconds in a Go duration such as `10s` or `1m0s`; None when it is not one."""
    if not text or len(text) > 32:
        return None
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _GO_UNITS[unit] for number, unit in parts)


CLIP_AT: Final = 200
"""Characters of client input that a message may echo."""


def _clip(value: object) -> str:
    return text.clipped(value, CLIP_AT)


_SHED_BODY: Final = json.dumps(
    reviews.refusal(
        "",
        429,
        "digestguard is overloaded: its event loop has lagged behind for a while, so this"
        " admission is refused rather than queued",
    )
).encode()
"""The refusal of a shed admission, encoded once: it may be sent thousands of times a second."""


_OVERLOADED: Final = metrics.ADMISSIONS_REFUSED.labels("overloaded")
_CONTENT_LENGTH: Final = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]{1,9})[ \t]*(?:\r\n|$)")


def _whole_request(data: bytes) -> bool:
    """Whether `data` is exactly one whole POST with a Content-Length body (what the
    apiserver sends), so it can be answered without handing it to aiohttp."""
    if not data.startswith(b"POST "):
        return False
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = data[:end].lower()
    if b"\r\ntransfer-encoding:" in head or b"\r\nexpect:" in head:
        return False
    length = _CONTENT_LENGTH.search(head)
    return length is not None and len(data) == end + 4 + int(length[1])


@functools.lru_cache(maxsize=1)
def _shed_answer(second: int) -> bytes:
    """The whole HTTP answer of a shed admission; made again once a second, for its Date."""
    return (
        b"HTTP/1.1 429 Too Many Requests\r\n"
        b"Content-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: " + str(len(_SHED_BODY)).encode() + b"\r\n"
        b"Retry-After: 1\r\n"
        b"Date: " + email.utils.formatdate(second, usegmt=True).encode() + b"\r\n"
        b"\r\n" + _SHED_BODY
    )


def _shed() -> aiohttp.web.Response:
    return _encoded(429, _SHED_BODY)


def _json(status: int, payload: Any) -> aiohttp.web.Response:
    return _encoded(status, json.dumps(payload).encode())


def _encoded(status: int, body: bytes) -> aiohttp.web.Response:
    return aiohttp.web.Response(
        status=status,
        body=body,
        content_type="application/json",
        # Every refusal for load says when to come back.
        headers={"Retry-After": "1"} if status == 429 else None,
    )


def _stamp(certfile: str, keyfile: str) -> tuple[int, ...] | None:
    """What changes when either file is rewritten or replaced by a rename."""
    try:
        cert, key = os.stat(certfile), os.stat(keyfile)
    except OSError:
        return None
    return cert.st_mtime_ns, cert.st_ino, cert.st_size, key.st_mtime_ns, key.st_ino, key.st_size


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    return trim


_MALLOC_TRIM: Final = _malloc_trim()
"""glibc's `malloc_trim`, or None where the C library has none (musl)."""


def _trim_heap() -> bool:
    """`malloc_trim(0)`: give free heap pages back. False where there is none."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def _bound_port(runner: aiohttp.web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None
