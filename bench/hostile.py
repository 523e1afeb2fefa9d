"""Hostile input for the `hostile` benchmark: what a client (not the apiserver) could send.

- `gzip_bomb()`: a gzip body of about 1 MiB that inflates to 1 GiB of JSON-ish zeros;
  `post_unread()` sends its headers and only the start of its body, then waits for the
  answer: a server that answers before the rest is sent did not need the body.
- `Slowloris`: many TLS connections, each sending a request one byte at a time.
- `glob_match_times()`: one wide glob against a long image name, in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import threading
import time
import timeit
import zlib
from pathlib import Path
from typing import Any


@functools.cache
def gzip_bomb(inflated: int = 1 << 30) -> bytes:
    """A gzip stream of `inflated` bytes of zeros (after a `{"a":"` to look like JSON)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    parts = [compressor.compress(b'{"a":"')]
    chunk = b"0" * (1 << 20)
    for _ in range(inflated // len(chunk)):
        parts.append(compressor.compress(chunk))
    parts.append(compressor.flush())
    return b"".join(parts)


def post_unread(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    ca: Path,
    first_bytes: int = 64 * 1024,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """POST over a new TLS connection: headers, the first `first_bytes` of the body, then
    wait for the status line. Afterwards try to send the rest (the server may have hung
    up). Times are from the end of the headers."""
    context = ssl.create_default_context(cafile=str(ca))
    raw = socket.create_connection((host, port), timeout=timeout)
    tls = context.wrap_socket(raw, server_hostname=host)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    result: dict[str, Any] = {"body_bytes": len(body), "sent_before_answer": first_bytes}
    try:
        tls.sendall(head.encode() + body[:first_bytes])
        started = time.perf_counter()
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = tls.recv(65536)
            if not data:
                break
            answer += data
        result["answer_ms"] = round((time.perf_counter() - started) * 1000, 3)
        status_line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
        result["status"] = int(status_line.split()[1]) if status_line.count(" ") >= 1 else 0
        result["answer_head"] = answer[:600].decode(errors="replace")
        try:
            tls.sendall(body[first_bytes:])
            result["rest_of_body"] = "sent (the server's socket still took it)"
        except OSError as error:
            result["rest_of_body"] = f"not sent: {type(error).__name__}"
    except OSError as error:
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        with contextlib.suppress(OSError):
            tls.close()
    return result


class Slowloris:
    """`count` TLS connections, each sending `POST /path HTTP/1.1\\r\\n...` one byte every
    `every` seconds (None: nothing at all after the handshake). A connection the server
    closes is counted and opened again, so the attack keeps its size.

    Runs its own event loop on a thread; `open_now()` is how many are open (handshake
    done, not yet seen closed).
    """

    def __init__(
        self, host: str, port: int, path: str, ca: Path, count: int, every: float | None
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.context = ssl.create_default_context(cafile=str(ca))
        self.count = count
        self.every = every
        self.open = 0
        self.opened = 0
        self.closed_by_server = 0
        self.failed_to_open = 0
        self.lifetimes_s: list[float] = []
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def open_now(self) -> int:
        return self.open

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        tasks = [asyncio.create_task(self._slot(n)) for n in range(self.count)]
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _slot(self, n: int) -> None:
        request = (
            (
                f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n"
            ).encode()
            + b"X-Padding: "
            + b"a" * 100000
        )
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.host, self.port, ssl=self.context, server_hostname=self.host
                    ),
                    timeout=15,
                )
            except (OSError, TimeoutError, ssl.SSLError):
                self.failed_to_open += 1
                await asyncio.sleep(1)
                continue
            self.opened += 1
            self.open += 1
            began = time.monotonic()
            position = 0
            closed = asyncio.create_task(reader.read(1))  # b"" or data: the server answered
            try:
                while not closed.done():
                    if self.every is not None:
                        writer.write(request[position : position + 1])
                        position += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(closed), self.every or 1.0)
            except (OSError, ssl.SSLError):
                pass
            finally:
                self.open -= 1
                if not self._stop.is_set():
                    self.closed_by_server += 1
                    self.lifetimes_s.append(time.monotonic() - began)
                closed.cancel()
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    def __enter__(self) -> Slowloris:
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def long_image_name(registry: str, length: int = 4096) -> dict[str, str]:
    """Image names (`registry/repository`) of `length` characters that make the wide glob
    `*.dkr.ecr.*.amazonaws.com/*-*-*-*-*/**` work hardest."""
    prefix = registry + "/"
    room = length - len(prefix)
    dashes = ("a-" * length)[: room - 2]
    return {
        # One long segment full of dashes and no '/' after it: every split is tried.
        "dashes, no match": prefix + ("a-" * length)[:room],
        # The same, matching: the segment ends and a '/' follows.
        "dashes, match": prefix + dashes + "/x",
        # Many short segments of dashes: '**' may start at any of them.
        "segments, match": prefix + ("a-b-c-d-e/" * length)[:room].rstrip("/"),
        # The host part full of the '.dkr.ecr.' the first '*' must skip.
        "hosts, no match": (".dkr.ecr" * length)[: length - 15] + ".amazonaws.co/x",
    }


def glob_match_times(pattern: str, names: dict[str, str], budget_s: float = 1.0) -> list[dict]:
    """Per-match time of `pattern` against each name: compiled once, as a policy is."""
    from webhook.core import policies

    glob = policies.compile_glob(pattern)
    glob.matches("warm-up")
    rows = []
    for label, name in names.items():
        timer = timeit.Timer(lambda name=name: glob.matches(name))
        number = max(1, int(budget_s / max(timer.timeit(1), 1e-7) / 5))
        runs = timer.repeat(repeat=5, number=number)
        rows.append(
            {
                "name": label,
                "length": len(name),
                "matches": glob.matches(name),
                "iterations": number * 5,
                "best_us": round(min(runs) / number * 1e6, 2),
                "median_us": round(sorted(runs)[2] / number * 1e6, 2),
                "worst_run_us": round(max(runs) / number * 1e6, 2),
            }
        )
    return rows
