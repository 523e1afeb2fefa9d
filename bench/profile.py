"""Where a warm admission's CPU goes in the user's setup, sampled from the running webhook.

py-spy samples the `digestguard serve` process (without pausing it) while vegeta sends
warm admissions over HTTPS keep-alive; each sample is a stack of the thread on CPU.
A sample is charged to the layer of its innermost frame ("own" time), and the
admission's layers are also counted inclusively: everything under kopf's webhook
function, everything under our handlers inside it.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")

LAYERS: tuple[tuple[str, str], ...] = (
    ("kopf", "kopf/"),
    ("aiohttp", "aiohttp/"),
    ("multidict, yarl", "multidict/"),
    ("multidict, yarl", "yarl/"),
    ("prometheus_client", "prometheus_client/"),
    ("logging", "logging/"),
    ("json", "json/"),
    ("TLS (asyncio sslproto, ssl)", "asyncio/sslproto.py"),
    ("TLS (asyncio sslproto, ssl)", "ssl.py"),
    ("asyncio event loop", "asyncio/"),
    ("asyncio event loop", "selectors.py"),
    ("webhook: server", "webhook/serving/server.py"),
    ("webhook: reviews", "webhook/serving/reviews.py"),
    ("webhook: admission edge", "webhook/serving/admission.py"),
    ("webhook: decision core", "webhook/core/"),
    ("webhook: resolver", "webhook/registries/"),
    ("webhook: other", "webhook/"),
)
"""Layers by where their files are; the first that matches a frame's file names it."""


def py_spy() -> str:
    for candidate in (os.environ.get("PY_SPY"), shutil.which("py-spy")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise SystemExit("py-spy not found: pip install 'py-spy>=0.4,<0.5' (or set PY_SPY)")


def record(pid: int, seconds: float, output: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    """Start sampling `pid` for `seconds`, `rate` samples a second, into `output` (raw)."""
    return subprocess.Popen(
        [
            py_spy(),
            "record",
            "--nonblocking",
            "--threads",
            "--format",
            "raw",
            "--rate",
            str(rate),
            "--duration",
            str(int(seconds)),
            "--pid",
            str(pid),
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for part in stack.split(";"):
        match = _FRAME.match(part.strip())
        if match:
            frames.append((match["function"], match["file"]))
        else:
            frames.append((part.strip(), ""))
    return frames


def _layer(file: str) -> str:
    path = "/" + file
    for name, marker in LAYERS:
        if "/" + marker in path:
            return name
    return "other (C, stdlib)"


def summarize(lines: Iterable[str]) -> dict[str, Any]:
    """Shares of the busy samples by the layer of their innermost frame.

    A sample whose innermost frame is the selector's `select` is the event loop waiting
    in `epoll_wait`: idle, left out of the shares and counted apart."""
    own: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    busy = idle = 0
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = _frames(stack)[1:]  # the first names the thread
        if not frames:
            continue
        count = int(count_text)
        function, file = frames[-1]
        if file.endswith("selectors.py") and function.endswith(".select"):
            idle += count
            continue
        busy += count
        own[_layer(file)] += count
        functions[f"{function} ({file})"] += count
    if not busy:
        return {"samples": 0}
    return {
        "samples": busy + idle,
        "idle_share": round(idle / (busy + idle), 4),
        "own_share_by_layer": {layer: round(n / busy, 4) for layer, n in own.most_common()},
        "top_functions": {name: round(n / busy, 4) for name, n in functions.most_common(15)},
    }
