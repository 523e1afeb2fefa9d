"""HTTPS serving of admission reviews, and the plain-HTTP health and metrics endpoints.

`AdmissionServer` is a webhook server in kopf's sense (called with kopf's webhook
function, yields client configs) but does not import kopf. It exists because the
stock server answers `allowed: true` to paths that name no handler, caps bodies at
1 MiB, and cannot reload certificates that are renewed in place.
"""

import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

import aiohttp.web

from webhook import metrics, names
from webhook.serving import reviews

logger = logging.getLogger("digestguard.serving")

DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
HANDLED_OPERATIONS: Final = frozenset({"CREATE", "UPDATE"})


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
        reload_interval: float = 10.0,
    ) -> None:
        self.address = address
        self.port = port
        self.certfile = certfile
        self.keyfile = keyfile
        self.answer_within = answer_within
        self.max_body_bytes = max_body_bytes
        self.reload_interval = reload_interval
        self.listening = asyncio.Event()
        self.bound_port: int | None = None
        self._context: ssl.SSLContext | None = None
        self._loaded_stamp: tuple[int, ...] | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def __call__(self, fn: ReviewFn) -> AsyncIterator[dict[str, Any]]:
        app = aiohttp.web.Application(client_max_size=self.max_body_bytes)

        async def handle(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
            return await self._handle(request, fn)

        app.router.add_route("*", "/{path:.*}", handle)
        runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            context = await self._wait_for_context() if self.certfile else None
            site = aiohttp.web.TCPSite(
                runner, self.address, self.port, ssl_context=context, reuse_address=True
            )
            await site.start()
            self.bound_port = _bound_port(runner) or self.port
            self.listening.set()
            scheme = "https" if context else "http"
            logger.info(
                "serving admission reviews",
                extra={"url": f"{scheme}://{self.address}:{self.bound_port}"},
            )
            yield {"url": f"{scheme}://{self.address}:{self.bound_port}"}
            while True:
                await asyncio.sleep(self.reload_interval)
                self.reload_if_changed()
        finally:
            self.listening.clear()
            await self.drain(within=self.answer_within + 1.0)
            await runner.cleanup()

    async def drain(self, within: float) -> None:
        """Wait until no admission is in flight (or `within` seconds pass)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), within)

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
        handler_id = http.match_info.get("path", "")
        if http.method != "POST":
            return _json(405, reviews.refusal("", 405, "admission reviews are POSTed"))
        if handler_id not in names.ROUTES:
            message = (
                f"no admission handler at /{handler_id}; handlers: {', '.join(names.ALL_HANDLERS)}"
            )
            return _json(404, reviews.refusal("", 404, message))
        self._inflight += 1
        self._idle.clear()
        try:
            status, response = await self._review(http, fn, handler_id)
        finally:
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
        return _json(status, response)

    async def _review(
        self, http: aiohttp.web.Request, fn: ReviewFn, handler_id: str
    ) -> tuple[int, Any]:
        try:
            raw = json.loads(await http.read())
        except aiohttp.web.HTTPRequestEntityTooLarge:
            message = f"the AdmissionReview is larger than {self.max_body_bytes} bytes"
            return 413, reviews.refusal("", 413, message)
        except (ValueError, UnicodeDecodeError) as error:
            return 400, reviews.refusal("", 400, f"the body is not valid JSON: {error}")
        try:
            request = reviews.check(raw)
        except reviews.InvalidReview as error:
            return 400, reviews.refusal(error.uid, 400, f"malformed AdmissionReview: {error}")
        route = (request.group, request.resource, request.subresource)
        if route not in names.ROUTES[handler_id]:
            what = f"{request.resource}.{request.group or 'core'}"
            if request.subresource:
                what += f"/{request.subresource}"
            message = (
                f"the webhook path /{handler_id} does not handle {what}; the webhook"
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
            response = await asyncio.wait_for(
                fn(raw, webhook=handler_id, headers=dict(http.headers), sslpeer={}),
                timeout=self.answer_within,
            )
        except TimeoutError:
            message = f"digestguard could not decide within {self.answer_within:.1f}s"
            logger.error("admission timed out", extra={"uid": request.uid, "handler": handler_id})
            return 200, reviews.refusal(request.uid, 504, message)
        except Exception as error:
            logger.exception("admission failed", extra={"uid": request.uid, "handler": handler_id})
            return 200, reviews.refusal(request.uid, 500, f"digestguard failed: {error}")
        return 200, response


class HealthServer:
    """Plain HTTP for the kubelet's probes and Prometheus: /healthz, /readyz, /metrics."""

    def __init__(self, *, address: str, port: int, readiness: Callable[[], list[str]]) -> None:
        self.address = address
        self.port = port
        self.readiness = readiness
        self.bound_port: int | None = None
        self._runner: aiohttp.web.AppRunner | None = None

    async def start(self) -> None:
        app = aiohttp.web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, self.address, self.port, reuse_address=True)
        await site.start()
        self.bound_port = _bound_port(self._runner) or self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        # Answering at all proves the event loop is alive.
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


def _json(status: int, payload: Any) -> aiohttp.web.Response:
    return aiohttp.web.Response(
        status=status, body=json.dumps(payload).encode(), content_type="application/json"
    )


def _stamp(certfile: str, keyfile: str) -> tuple[int, ...] | None:
    """What changes when either file is rewritten or replaced by a rename."""
    try:
        cert, key = os.stat(certfile), os.stat(keyfile)
    except OSError:
        return None
    return cert.st_mtime_ns, cert.st_ino, cert.st_size, key.st_mtime_ns, key.st_ino, key.st_size


def _bound_port(runner: aiohttp.web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None
