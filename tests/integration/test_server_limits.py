"""What one client can make the admission server do is bounded.

The server runs for real on loopback; the framework function stands in for kopf and
records what reached it. Nothing here asserts how fast anything is: the tests count
calls, read status codes and watch connections close.
"""

import asyncio
import contextlib
import gzip
import json
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import cluster
from webhook import metrics, names
from webhook.serving import server

JSON = {"Content-Type": "application/json"}


class HeldFn:
    """The framework function: answers allowed once `release` is set."""

    def __init__(self) -> None:
        self.entered = 0
        self.cancelled = 0
        self.release = asyncio.Event()
        self.inside = asyncio.Event()

    async def __call__(self, request: Any, **_: Any) -> Any:
        self.entered += 1
        self.inside.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": request["request"]["uid"], "allowed": True},
        }


def review() -> dict[str, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0d7b4c44-1b4e-4b8e-9d6e-3f0a7f9c0002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "team-a",
            "userInfo": {"username": "alice"},
            "object": pod,
        },
    }


Served = tuple[str, HeldFn, server.AdmissionServer]


@contextlib.asynccontextmanager
async def serving(tls: cluster.LoopbackTLS | None = None, **limits: Any) -> AsyncIterator[Served]:
    fn = HeldFn()
    # The client shares this event loop: its own work would read as the server's lag.
    limits.setdefault("shed_lag", 0)
    admission_server = server.AdmissionServer(
        address="127.0.0.1",
        port=0,
        certfile=str(tls.cert_file) if tls else None,
        keyfile=str(tls.key_file) if tls else None,
        answer_within=30.0,
        **limits,
    )
    configs = admission_server(fn)
    await configs.__anext__()
    try:
        scheme = "https" if tls else "http"
        yield f"{scheme}://127.0.0.1:{admission_server.bound_port}", fn, admission_server
    finally:
        fn.release.set()
        await configs.aclose()


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    data = json.dumps(review()).encode() if body is None else body
    async with session.post(url, data=data, headers=JSON if headers is None else headers) as r:
        return r.status, json.loads(await r.read()), r


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds: the server exposes counts, not events."""
    for _ in range(6_000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition did not hold within a minute")


def counter(name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_admissions_over_the_limit_are_refused_at_once_not_queued() -> None:
    async with serving(max_inflight=2) as (url, fn, _), aiohttp.ClientSession() as session:
        held = [asyncio.create_task(post(session, f"{url}/{names.MUTATE_PODS}")) for _ in range(2)]
        await until(lambda: fn.entered >= 2)

        status, answer, response = await post(session, f"{url}/{names.MUTATE_PODS}")

        assert status == 429
        assert answer["response"]["allowed"] is False
        assert "refused rather than queued" in answer["response"]["status"]["message"]
        assert response.headers["Retry-After"] == "1"
        assert fn.entered == 2, "the refused admission never reached the framework"
        fn.release.set()
        assert [s for s, _, _ in await asyncio.gather(*held)] == [200, 200]


async def test_admissions_over_the_deciding_limit_wait_briefly_then_are_refused() -> None:
    async with (
        serving(max_deciding=2) as (url, fn, _),
        aiohttp.ClientSession() as session,
    ):
        held = [asyncio.create_task(post(session, f"{url}/{names.MUTATE_PODS}")) for _ in range(2)]
        await until(lambda: fn.entered >= 2)

        status, answer, response = await post(session, f"{url}/{names.MUTATE_PODS}")

        assert status == 429
        assert "deciding 2 admissions already" in answer["response"]["status"]["message"]
        assert response.headers["Retry-After"] == "1"
        assert fn.entered == 2
        fn.release.set()
        assert [s for s, _, _ in await asyncio.gather(*held)] == [200, 200]


async def test_admissions_waiting_on_a_registry_do_not_count_as_being_decided() -> None:
    waiting = [0]
    async with (
        serving(max_deciding=2, waiting_on_registry=lambda: waiting[0]) as (url, fn, _),
        aiohttp.ClientSession() as session,
    ):
        held = [asyncio.create_task(post(session, f"{url}/{names.MUTATE_PODS}")) for _ in range(2)]
        await until(lambda: fn.entered >= 2)
        waiting[0] = 2  # both are now waiting for registry lookups

        third = asyncio.create_task(post(session, f"{url}/{names.MUTATE_PODS}"))
        await until(lambda: fn.entered >= 3)
        fn.release.set()
        assert [s for s, _, _ in await asyncio.gather(*held, third)] == [200, 200, 200]


async def test_a_refused_admission_is_counted() -> None:
    before = counter("digestguard_admissions_refused_total", {"reason": "overloaded"})
    async with serving(max_inflight=1) as (url, fn, _), aiohttp.ClientSession() as session:
        held = asyncio.create_task(post(session, f"{url}/{names.MUTATE_PODS}"))
        await fn.inside.wait()
        await post(session, f"{url}/{names.MUTATE_PODS}")
        fn.release.set()
        await held
    after = counter("digestguard_admissions_refused_total", {"reason": "overloaded"})
    assert after == before + 1


async def test_a_loop_that_keeps_lagging_sheds_admissions_until_it_catches_up() -> None:
    async with (
        serving(shed_lag=server.DEFAULT_SHED_LAG) as (url, fn, admission_server),
        aiohttp.ClientSession() as session,
    ):
        fn.release.set()
        assert (await post(session, f"{url}/{names.MUTATE_PODS}"))[0] == 200
        before = counter("digestguard_admissions_refused_total", {"reason": "overloaded"})
        # The loop is kept busy 20 ms at a time, as a saturated core keeps it.
        busy = True

        async def hog() -> None:
            while busy:
                deadline = time.process_time() + 0.02
                while time.process_time() < deadline:
                    pass
                await asyncio.sleep(0)

        hogging = asyncio.create_task(hog())
        try:
            await until(lambda: admission_server.shedding)
            status, answer, response = await post(session, f"{url}/{names.MUTATE_PODS}")
        finally:
            busy = False
            await hogging
        assert status == 429
        assert answer["kind"] == "AdmissionReview"
        assert "event loop has lagged behind" in answer["response"]["status"]["message"]
        assert response.headers["Retry-After"] == "1"
        assert counter("digestguard_admissions_refused_total", {"reason": "overloaded"}) > before
        assert counter("digestguard_shedding") == 1
        # Caught up, it serves again.
        await until(lambda: counter("digestguard_shedding") == 0)
        assert (await post(session, f"{url}/{names.MUTATE_PODS}"))[0] == 200


def _raw_post(body: bytes, *, split: bool = False) -> list[bytes]:
    """An HTTP/1.1 POST of `body` as Go's client sends it: in one write, or (`split`)
    its head first and its body in a second write."""
    head = (
        f"POST /{names.MUTATE_PODS}?timeout=10s HTTP/1.1\r\nHost: webhook\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Accept-Encoding: gzip\r\n\r\n"
    ).encode()
    return [head, body] if split else [head + body]


def _exchange(sock: socket.socket, writes: list[bytes]) -> tuple[int, dict[str, str], Any]:
    """Send one request (as `writes`) on `sock` and read its whole answer."""
    sock.settimeout(60)
    for index, chunk in enumerate(writes):
        if index:
            time.sleep(0.05)  # the head alone reaches the server first
        sock.sendall(chunk)

    def more() -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    received = b""
    while b"\r\n\r\n" not in received:
        received += more()
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(rest) < int(headers["content-length"]):
        rest += more()
    return int(status_line.split()[1]), headers, json.loads(rest)


@pytest.mark.parametrize("secured", [False, True], ids=["http", "https"])
async def test_shed_admissions_are_refused_and_the_connection_kept(
    tmp_path: Path, secured: bool
) -> None:
    tls = cluster.loopback_tls(tmp_path) if secured else None
    async with serving(tls) as (_, fn, admission_server):
        fn.release.set()
        port = admission_server.bound_port
        assert port is not None
        raw = socket.create_connection(("127.0.0.1", port))
        sock = raw
        if tls is not None:  # the handshake needs the server's loop: in a thread
            context = ssl.create_default_context(cafile=str(tls.ca_file))
            sock = await asyncio.to_thread(context.wrap_socket, raw, server_hostname="localhost")
        body = json.dumps(review()).encode()
        before = counter("digestguard_admissions_refused_total", {"reason": "overloaded"})
        with sock:
            shed = True
            admission_server.sheds = lambda: shed  # type: ignore[method-assign]
            # Whole in one write: refused before aiohttp sees it; in two: by the handler.
            for split in (False, True):
                status, headers, answer = await asyncio.to_thread(
                    _exchange, sock, _raw_post(body, split=split)
                )
                assert status == 429
                assert headers["retry-after"] == "1"
                assert answer["kind"] == "AdmissionReview"
                assert answer["response"]["allowed"] is False
                assert "overloaded" in answer["response"]["status"]["message"]
            assert fn.entered == 0
            # No longer shedding, the same connection is served as before.
            shed = False
            status, _, answer = await asyncio.to_thread(_exchange, sock, _raw_post(body))
            assert status == 200
            assert answer["response"]["allowed"] is True
            assert fn.entered == 1
        after = counter("digestguard_admissions_refused_total", {"reason": "overloaded"})
        assert after == before + 2


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /mutate-pods HTTP/1.1\r\nHost: w\r\n\r\n",
        b"POST /mutate-pods HTTP/1.1\r\nHost: w\r\nContent-Length: 5\r\n\r\nab",
        b"POST /mutate-pods HTTP/1.1\r\nHost: w\r\nContent-Length: 2\r\n\r\nabcd",
        b"POST /mutate-pods HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /mutate-pods HTTP/1.1\r\nHost: w\r\n\r\n",
        b"POST /mutate-pods HTTP/1.1\r\nHost: w\r\nContent-Length: 2",
    ],
    ids=["get", "short", "two-requests", "chunked", "no-length", "no-end-of-head"],
)
def test_only_one_whole_post_is_answered_without_aiohttp(request_bytes: bytes) -> None:
    assert not server._whole_request(request_bytes)


def test_a_whole_post_is_recognised_however_its_headers_are_spelled() -> None:
    body = b'{"a": 1}'
    request = (
        b"POST /mutate-pods?timeout=10s HTTP/1.1\r\nHost: w\r\n"
        b"CONTENT-LENGTH:\t8 \r\nContent-Type: application/json\r\n\r\n" + body
    )
    assert server._whole_request(request)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Content-Type": "text/plain"}, "application/json, not text/plain"),
        ({}, "application/json, not application/octet-stream"),
        (
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            "compressed body (gzip)",
        ),
        (
            {"Content-Type": "application/json", "Content-Encoding": "deflate"},
            "compressed body (deflate)",
        ),
    ],
)
async def test_bodies_the_apiserver_never_sends_are_refused_unread(
    headers: dict[str, str], expected: str
) -> None:
    # A gzip bomb: 1 MiB on the wire that would inflate to 1 GiB.
    bomb = gzip.compress(b"[" * (1 << 20), compresslevel=9)
    async with serving() as (url, fn, _), aiohttp.ClientSession() as session:
        status, answer, _ = await post(session, f"{url}/{names.MUTATE_PODS}", bomb, headers)
    assert status == 415
    assert expected in answer["response"]["status"]["message"]
    assert fn.entered == 0


async def test_deep_nesting_gets_a_well_formed_refusal() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    async with serving() as (url, fn, _), aiohttp.ClientSession() as session:
        status, answer, _ = await post(session, f"{url}/{names.MUTATE_PODS}", body)
    assert status == 400
    assert answer["kind"] == "AdmissionReview"
    assert "nested too deeply" in answer["response"]["status"]["message"]
    assert fn.entered == 0


async def test_client_input_echoed_in_a_message_is_clipped() -> None:
    async with serving() as (url, _, _), aiohttp.ClientSession() as session:
        status, answer, _ = await post(session, f"{url}/{'x' * 5_000}")
    assert status == 404
    message = answer["response"]["status"]["message"]
    assert len(message) < 1_000
    assert "(5000 characters)" in message


async def test_the_apiservers_timeout_bounds_the_answer() -> None:
    async with serving() as (url, fn, _), aiohttp.ClientSession() as session:
        status, answer, _ = await post(session, f"{url}/{names.MUTATE_PODS}?timeout=1s")
    assert status == 200
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 504
    assert fn.entered == 1
    assert fn.cancelled == 1, "the work was abandoned, not left running"


async def test_a_timeout_with_no_time_left_is_answered_without_deciding() -> None:
    async with serving() as (url, fn, _), aiohttp.ClientSession() as session:
        status, answer, _ = await post(session, f"{url}/{names.MUTATE_PODS}?timeout=100ms")
    assert (status, answer["response"]["status"]["code"]) == (200, 504)
    assert fn.entered == 0


@pytest.mark.parametrize("value", ["", "soon", "10", "-1s", "1s2", "9" * 40 + "s"])
async def test_a_timeout_parameter_that_is_no_go_duration_is_ignored(value: str) -> None:
    async with serving() as (url, fn, _), aiohttp.ClientSession() as session:
        fn.release.set()
        status, answer, _ = await post(session, f"{url}/{names.MUTATE_PODS}?timeout={value}")
    assert (status, answer["response"]["allowed"]) == (200, True)


async def test_a_client_that_hangs_up_has_its_admission_cancelled() -> None:
    async with serving() as (url, fn, _):
        async with aiohttp.ClientSession() as session:
            request = asyncio.create_task(post(session, f"{url}/{names.MUTATE_PODS}"))
            await fn.inside.wait()
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
        await until(lambda: fn.cancelled > 0)
    assert fn.cancelled == 1


def _reads_eof(sock: socket.socket) -> bool:
    """Whether the peer closed `sock` (an EOF or a reset) before the 60 s timeout."""
    sock.settimeout(60)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize(
    "sent",
    [
        # Else max_connections of them, each re-opened when the keep-alive timeout
        # closes it, lock every client out.
        pytest.param(b"", id="a connection that never sends a request"),
        pytest.param(
            b"POST /mutate-pods HTTP/1.1\r\nHost: x\r\nContent-Type: appl",
            id="a request that trickles in",
        ),
    ],
)
async def test_a_request_that_does_not_arrive_in_time_is_cut_off(sent: bytes) -> None:
    before = counter("digestguard_connections_timed_out_total")
    async with serving(request_read_timeout=0.5) as (_, fn, admission_server):
        port = admission_server.bound_port
        assert port is not None
        sock = socket.create_connection(("127.0.0.1", port))
        with sock:
            sock.sendall(sent)

            closed = await asyncio.to_thread(_reads_eof, sock)

        assert closed
        assert fn.entered == 0
    assert counter("digestguard_connections_timed_out_total") == before + 1


async def test_a_connection_kept_alive_after_a_refusal_is_not_cut_off() -> None:
    # A refusal answers without reading the body; the request is over all the same,
    # and the connection idle, not a request that is late.
    before = counter("digestguard_connections_timed_out_total")
    async with serving(request_read_timeout=0.5) as (_, fn, admission_server):
        fn.release.set()
        port = admission_server.bound_port
        assert port is not None
        body = json.dumps(review()).encode()
        refused = _raw_post(body)[0].replace(b"application/json", b"text/plain")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            status, _, _ = await asyncio.to_thread(_exchange, sock, [refused])
            assert status == 415
            await asyncio.sleep(1.0)  # twice the read timeout, idle
            status, _, answer = await asyncio.to_thread(_exchange, sock, _raw_post(body))
        assert status == 200
        assert answer["response"]["allowed"] is True
    assert counter("digestguard_connections_timed_out_total") == before


async def test_a_body_that_never_finishes_is_cut_off() -> None:
    async with serving(request_read_timeout=0.5) as (_, fn, admission_server):
        port = admission_server.bound_port
        assert port is not None
        sock = socket.create_connection(("127.0.0.1", port))
        with sock:
            sock.sendall(
                b"POST /mutate-pods HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
            closed = await asyncio.to_thread(_reads_eof, sock)
        assert closed
        assert fn.entered == 0


async def test_connections_over_the_limit_are_closed_as_they_are_made() -> None:
    async with serving(max_connections=3) as (_, _, admission_server):
        port = admission_server.bound_port
        assert port is not None
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            await until(lambda: admission_server.connections >= 3)
            extra = socket.create_connection(("127.0.0.1", port))
            with extra:
                assert await asyncio.to_thread(_reads_eof, extra)
            assert admission_server.connections == 3
        finally:
            for sock in held:
                sock.close()


async def test_tls_connections_over_the_limit_are_reset_before_any_handshake(
    tmp_path: Path,
) -> None:
    tls = cluster.loopback_tls(tmp_path)
    refused = counter("digestguard_connections_refused_total")
    async with serving(tls, max_connections=2) as (url, fn, admission_server):
        fn.release.set()
        port = admission_server.bound_port
        assert port is not None
        # Two clients that connect and never say hello: mid-handshake, they hold slots.
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            await until(lambda: counter("digestguard_connections") == 2)
            extra = socket.create_connection(("127.0.0.1", port))
            with extra:
                assert await asyncio.to_thread(_reads_eof, extra)
            assert counter("digestguard_connections_refused_total") == refused + 1
        finally:
            for sock in held:
                sock.close()
        await until(lambda: counter("digestguard_connections") == 0)
        context = ssl.create_default_context(cafile=str(tls.ca_file))
        connector = aiohttp.TCPConnector(ssl=context)
        async with aiohttp.ClientSession(connector=connector) as session:
            status, answer, _ = await post(session, f"{url}/{names.MUTATE_PODS}")
        assert status == 200
        assert answer["response"]["allowed"] is True


async def test_memory_is_given_back_once_a_burst_of_connections_is_over() -> None:
    async with serving() as (_, _, admission_server):
        port = admission_server.bound_port
        assert port is not None
        assert admission_server.give_back_memory_after_a_burst() is False, "no burst yet"
        burst = [socket.create_connection(("127.0.0.1", port)) for _ in range(server.BURST_OVER)]
        await until(lambda: counter("digestguard_connections") == server.BURST_OVER)
        assert admission_server.give_back_memory_after_a_burst() is False, "still in the burst"
        for sock in burst:
            sock.close()
        await until(lambda: counter("digestguard_connections") == 0)
        assert admission_server.give_back_memory_after_a_burst() is True
        assert admission_server.give_back_memory_after_a_burst() is False, "once per burst"


async def test_answers_close_their_connection_while_draining() -> None:
    async with serving() as (url, fn, admission_server), aiohttp.ClientSession() as session:
        fn.release.set()
        _, _, before = await post(session, f"{url}/{names.MUTATE_PODS}")
        admission_server.begin_draining()
        _, _, during = await post(session, f"{url}/{names.MUTATE_PODS}")
    assert before.headers.get("Connection", "").lower() != "close"
    assert during.headers["Connection"].lower() == "close"


async def test_idle_connections_are_closed_and_busy_ones_kept() -> None:
    async with serving() as (url, fn, admission_server):
        port = admission_server.bound_port
        assert port is not None
        idle = socket.create_connection(("127.0.0.1", port))
        async with aiohttp.ClientSession() as session:
            busy = asyncio.create_task(post(session, f"{url}/{names.MUTATE_PODS}"))
            await fn.inside.wait()
            await until(lambda: admission_server.connections >= 2)

            closed = admission_server.close_idle_connections()

            assert closed == 1
            with idle:
                assert await asyncio.to_thread(_reads_eof, idle)
            fn.release.set()
            status, _, _ = await busy
            assert status == 200


async def test_health_is_answered_while_the_admission_loop_is_blocked() -> None:
    blocked = threading.Event()
    answered: list[bytes] = []
    health = server.HealthServer(address="127.0.0.1", port=0, readiness=lambda: [])
    await health.start()
    try:
        url = f"http://127.0.0.1:{health.bound_port}/healthz"

        def probe() -> None:
            blocked.wait(60)
            with urllib.request.urlopen(url, timeout=60) as response:
                answered.append(response.read())

        prober = threading.Thread(target=probe)
        prober.start()
        # Block this event loop (the admission loop) until the probe has its answer.
        blocked.set()
        prober.join(60)
        assert answered == [b"ok\n"]
    finally:
        await health.stop()


async def test_readiness_reports_what_it_waits_for() -> None:
    waiting: list[str] = ["the TLS certificate is not loaded yet"]
    reasons: Callable[[], list[str]] = lambda: list(waiting)  # noqa: E731
    health = server.HealthServer(address="127.0.0.1", port=0, readiness=reasons)
    await health.start()
    try:
        url = f"http://127.0.0.1:{health.bound_port}/readyz"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                assert response.status == 503
                assert "waiting: the TLS certificate" in await response.text()
            waiting.clear()
            async with session.get(url) as response:
                assert (response.status, await response.text()) == (200, "ready\n")
    finally:
        await health.stop()
