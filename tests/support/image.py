"""The webhook's container image (built by `hack/image.py`), unpacked and run as a runtime would.

There is no container engine here, so this does the part of one that matters to the
webhook, with the tools of util-linux and coreutils, as root:

- the image's layers unpacked, in order, into a root filesystem;
- a mount namespace of its own (`unshare --mount`) in which that root is mounted
  read-only (`readOnlyRootFilesystem`), each volume is mounted at its path (emptyDir
  with `medium: Memory` as a tmpfs), the ServiceAccount token directory at the
  kubelet's path, `/etc/hosts` (plus any `hostAliases`) and `/etc/resolv.conf` from
  the node and the usual device nodes;
- `chroot` into it as the user the pod names (65532), after `setpriv` has set
  `no_new_privs` (`allowPrivilegeEscalation: false`) and cut the capability bounding
  set to what chroot itself needs; the user switch then clears every capability
  (`capabilities: drop: [ALL]`).

The network is the host's, as with `hostNetwork`: the process listens on this
machine's ports. Without root, or without mmdebstrap to build the image, the tests
that need this are skipped with a loud `IMAGE SKIPPED` reason (in CI, a failure).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import pytest

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
SKIPPED: Final = "IMAGE SKIPPED"
SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
DEVICES: Final = ("null", "zero", "full", "random", "urandom", "tty")
HOST_TOOLS: Final = ("unshare", "mount", "setpriv", "chroot", "tar", "mmdebstrap")


def skip_unless_runnable() -> None:
    """Skip (in CI: fail) loudly unless images can be built and run here."""
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    reason = ""
    if os.geteuid() != 0:
        reason = "running the image needs root (a mount namespace and chroot)"
    elif missing:
        reason = f"{', '.join(missing)} not installed (apt-get install mmdebstrap)"
    else:
        with tempfile.TemporaryDirectory() as mount_point:
            probe = subprocess.run(
                ["unshare", "--mount", "--", "mount", "-t", "tmpfs", "probe", mount_point],
                capture_output=True,
                text=True,
                check=False,
            )
        if probe.returncode != 0:
            reason = f"no mount namespace here: {probe.stderr.strip()}"
    if reason:
        message = f"{SKIPPED}: {reason}"
        if os.environ.get("DIGESTGUARD_REQUIRE_E2E") == "1":
            pytest.fail(message.replace("SKIPPED", "REQUIRED"), pytrace=False)
        pytest.skip(message)


@dataclasses.dataclass(frozen=True)
class Layout:
    """An OCI image layout on disk, with the digest of its one manifest."""

    path: Path
    digest: str

    def blob(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def json(self, digest: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.blob(digest).read_bytes())
        return loaded

    @property
    def manifest(self) -> dict[str, Any]:
        return self.json(self.digest)

    @property
    def config(self) -> dict[str, Any]:
        return self.json(self.manifest["config"]["digest"])


def build(output: Path) -> Layout:
    """Build the image from this checkout with `hack/image.py` (the base layer is cached)."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "hack" / "image.py"), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"hack/image.py failed:\n{result.stderr[-4000:]}")
    path, _, digest = result.stdout.strip().splitlines()[-1].rpartition("@")
    return Layout(Path(path), digest)


def unpack(layout: Layout, rootfs: Path) -> Path:
    """Apply the image's layers in order into `rootfs` (owners kept; no device nodes)."""
    rootfs.mkdir(parents=True)
    for layer in layout.manifest["layers"]:
        listing = subprocess.run(
            ["tar", "-tzf", str(layout.blob(layer["digest"]))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        whiteouts = [name for name in listing.splitlines() if "/.wh." in f"/{name}"]
        assert not whiteouts, f"layer {layer['digest']} deletes files; unpack cannot: {whiteouts}"
        subprocess.run(
            [
                "tar",
                "-xzf",
                str(layout.blob(layer["digest"])),
                "-C",
                str(rootfs),
                "--same-owner",
                "--numeric-owner",
                "--same-permissions",
                "--exclude=./dev/*",
            ],
            check=True,
        )
    return rootfs


@dataclasses.dataclass(frozen=True)
class Mount:
    """A directory of this machine mounted at `target` in the container."""

    source: Path
    target: str
    read_only: bool = False
    memory: bool = False  # an emptyDir with medium Memory: a tmpfs, `source` unused


def run_command(
    rootfs: Path,
    mounts: Sequence[Mount],
    argv: Sequence[str],
    *,
    user: int,
    group: int,
    read_only_root: bool,
    no_new_privs: bool,
    hosts: Path = Path("/etc/hosts"),
) -> list[str]:
    """The host command that runs `argv` in `rootfs` as a container would (see the module)."""
    lines = ["set -eu", f"root={shlex.quote(str(rootfs))}", 'mount --bind "$root" "$root"']
    for mount in mounts:
        target = shlex.quote(str(inside(rootfs, mount.target)))
        if mount.memory:
            lines.append(f"mount -t tmpfs -o size=16m,mode=1777,nosuid,nodev tmpfs {target}")
        else:
            lines.append(f"mount --bind {shlex.quote(str(mount.source))} {target}")
        if mount.read_only:
            lines.append(f"mount -o remount,bind,ro {target}")
    for device in DEVICES:
        target = shlex.quote(str(inside(rootfs, f"/dev/{device}")))
        lines.append(f"mount --bind /dev/{device} {target}")
    for source, name in ((hosts, "hosts"), (Path("/etc/resolv.conf"), "resolv.conf")):
        target = shlex.quote(str(inside(rootfs, f"/etc/{name}")))
        lines.append(f"mount --bind {shlex.quote(str(source))} {target}")
        lines.append(f"mount -o remount,bind,ro {target}")
    if read_only_root:
        lines.append('mount -o remount,bind,ro "$root"')
    privileges = "--no-new-privs " if no_new_privs else ""
    lines.append(
        f"exec setpriv {privileges}--bounding-set=-all,+sys_chroot,+setuid,+setgid -- chroot"
        f' --userspec={user}:{group} --groups={group} "$root" "$@"'
    )
    return ["unshare", "--mount", "--", "sh", "-c", "\n".join(lines), "sh", *argv]


def inside(rootfs: Path, path: str) -> Path:
    """Where `path` of the container is on this machine: its symbolic links followed as
    the container sees them (`/var/run` → `/run` is the image's `/run`, never this
    machine's), so nothing is created or mounted outside `rootfs`."""
    resolved = rootfs
    pending = [part for part in path.split("/") if part not in ("", ".")]
    for _ in range(255):
        if not pending:
            return resolved
        part = pending.pop(0)
        if part == "..":
            resolved = resolved.parent if resolved != rootfs else rootfs
            continue
        candidate = resolved / part
        if candidate.is_symlink():
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = rootfs
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
        else:
            resolved = candidate
    raise RuntimeError(f"too many symbolic links resolving {path} in {rootfs}")


def prepare_mount_points(rootfs: Path, mounts: Sequence[Mount]) -> None:
    """Create what the mounts need in the root (a runtime does this before it starts)."""
    for mount in mounts:
        inside(rootfs, mount.target).mkdir(parents=True, exist_ok=True)
    for device in DEVICES:
        inside(rootfs, f"/dev/{device}").touch()
    for name in ("hosts", "resolv.conf"):
        inside(rootfs, f"/etc/{name}").touch()


def image_environment(config: Mapping[str, Any]) -> dict[str, str]:
    """The `Env` of an image config, as a mapping."""
    return dict(item.split("=", 1) for item in config.get("config", {}).get("Env", ()))
