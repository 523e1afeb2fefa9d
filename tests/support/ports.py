"""Loopback ports for the servers the tests start.

A server that can bind port 0 does, and says in its log which port it got:
`announced_port` reads it from there. A server that must be told its port before it
starts (the chart's Service port, the webhook's health port, the control plane's)
gets one from `free_port`. That port is below the kernel's ephemeral range, not from
bind(("127.0.0.1", 0)): such a port, closed again, is handed to the next outgoing
connection of any process, and the server that was told it fails with "address
already in use". Below the range only another server told the same number can take
it, and no port is handed out twice in one test session.
"""

import random
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Final

_LOWEST: Final = 10000
_EPHEMERAL_RANGE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def _below_ephemeral() -> range:
    try:
        first = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    return range(_LOWEST, max(first, _LOWEST + 1000))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that no socket holds now and that no connection will take."""
    candidates = _below_ephemeral()
    while True:
        port = random.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


def announced_port(
    log: Path, pattern: str, process: subprocess.Popen[bytes], within: float = 60.0
) -> int:
    """The port a server started on port 0 wrote to `log`: group 1 of `pattern`'s first
    match. RuntimeError (with the log) when the process exits or `within` passes first."""
    give_up = time.monotonic() + within
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = re.search(pattern, text)
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before saying its port:\n{text}")
        if time.monotonic() > give_up:
            raise RuntimeError(f"did not say its port within {within}s:\n{text}")
        time.sleep(0.05)


def refusing_port(host: str = "127.0.0.1") -> tuple[socket.socket, int]:
    """A socket bound to a port of `host` that does not listen, and the port: every
    connection to it is refused for as long as the socket stays open."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind((host, 0))
    return holder, int(holder.getsockname()[1])
