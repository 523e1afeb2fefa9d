"""Build the webhook's container image without a container engine: an OCI image layout.

    python hack/image.py [--output DIR] [--tag TAG]      (or: make image)

Two layers:

- **base**: Debian's `python3` and `ca-certificates` on the Essential set, made by
  `mmdebstrap` from this machine's apt sources, plus the user `nonroot` (65532, the
  chart's `runAsUser`). Cached under `$DIGESTGUARD_CACHE/image/` by its recipe.
- **app**: digestguard and its dependencies, at the versions installed in the
  interpreter running this script (the ones the tests ran with), in
  `/opt/digestguard/site-packages`, compiled ahead (the root filesystem is read-only
  at run time), and the entry point `/usr/local/bin/digestguard`.

The image runs as 65532:65532 with entry point `digestguard` (`serve` by default), as
the chart's Deployment calls it. The binary wheels are chosen for the image's CPython
3.11 and glibc 2.36 (amd64), not this machine's; the script itself must run on
Python 3.11, which compiles the modules.

The last line printed is `<output>@<manifest digest>`. Copy it to a registry with any
OCI tool, e.g. `skopeo copy oci:<output>:<tag> docker://<registry>/digestguard:<tag>`,
and install the chart with `image.repository` and `image.digest`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
CACHE: Final = Path(os.environ.get("DIGESTGUARD_CACHE", Path.home() / ".cache" / "digestguard"))

SUITE: Final = "bookworm"
BASE_PACKAGES: Final = ("python3", "ca-certificates")
USER: Final = 65532
# Documentation, manuals and translations are of no use in a webhook's image.
EXCLUDED_PATHS: Final = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
)
# Debian 12's python3 and glibc 2.36, for the wheels: every manylinux tag that glibc runs.
IMAGE_PYTHON: Final = "3.11"
IMAGE_PLATFORMS: Final = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
SITE_PACKAGES: Final = "opt/digestguard/site-packages"
ENTRY_POINT: Final = "usr/local/bin/digestguard"
ENTRY_POINT_SCRIPT: Final = """#!/usr/bin/python3 -I
import sys

from webhook.cli import main

sys.exit(main())
"""
# Debian's python3 adds the directories named in this file to sys.path.
PATH_FILE: Final = "usr/lib/python3/dist-packages/digestguard.pth"

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclasses.dataclass(frozen=True)
class Layer:
    """A gzipped layer in the cache: its file, digest (of the gzip) and diff id (of the tar)."""

    path: Path
    digest: str
    diff_id: str
    size: int


def log(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=CACHE / "image" / "oci")
    parser.add_argument("--tag", default=version)
    parser.add_argument(
        "--refresh-base",
        action="store_true",
        help="build the base layer again (for Debian's latest updates) instead of the cached one",
    )
    options = parser.parse_args(argv)
    if f"{sys.version_info.major}.{sys.version_info.minor}" != IMAGE_PYTHON:
        # The modules are compiled ahead by this interpreter, for the image's.
        raise SystemExit(f"hack/image.py must run with Python {IMAGE_PYTHON}, the image's")
    epoch = source_date_epoch()
    base = base_layer(epoch, refresh=options.refresh_base)
    with tempfile.TemporaryDirectory() as scratch:
        app = app_layer(epoch, Path(scratch))
        digest = write_layout(options.output, options.tag, [base, app], version, epoch)
    print(f"{options.output}@{digest}")
    return 0


def source_date_epoch() -> int:
    """The time every file in the image carries: the last commit's, else a fixed one."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    result = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else 0


# --------------------------------------------------------------------------
# The base layer
# --------------------------------------------------------------------------


def base_recipe() -> list[str]:
    account = f"nonroot:x:{USER}:{USER}:nonroot:/home/nonroot:/usr/sbin/nologin"
    hooks = [
        f'echo "{account}" >> "$1/etc/passwd"',
        f'echo "nonroot:x:{USER}:" >> "$1/etc/group"',
        f'mkdir -p "$1/home/nonroot" && chown {USER}:{USER} "$1/home/nonroot"',
        # No package manager state or caches: nothing installs at run time.
        'rm -rf "$1"/var/cache/* "$1"/var/lib/apt/lists/* "$1"/var/log/*',
    ]
    return [
        "--variant=essential",
        f"--include={','.join(BASE_PACKAGES)}",
        *(f"--dpkgopt=path-exclude={path}" for path in EXCLUDED_PATHS),
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        *(f"--customize-hook={hook}" for hook in hooks),
        SUITE,
    ]


def base_layer(epoch: int, *, refresh: bool = False) -> Layer:
    recipe = base_recipe()
    key = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]
    cached = CACHE / "image" / f"base-{key}"
    if (cached / "layer.json").exists() and not refresh:
        log(f"base layer: cached ({cached})")
        return _layer_from(cached)
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise SystemExit("hack/image.py needs mmdebstrap: apt-get install mmdebstrap")
    mode = "root" if os.geteuid() == 0 else "unshare"
    cached.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        rootfs = Path(scratch) / "rootfs.tar"
        log(f"base layer: mmdebstrap {SUITE} with {', '.join(BASE_PACKAGES)} ({mode} mode)")
        subprocess.run(
            [mmdebstrap, f"--mode={mode}", "--quiet", *recipe[:-1], recipe[-1], str(rootfs)],
            check=True,
            env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)},
        )
        layer = _compress(rootfs, cached)
    log(f"base layer: {layer.size / 2**20:.1f} MiB compressed")
    return layer


# --------------------------------------------------------------------------
# The app layer
# --------------------------------------------------------------------------


def app_layer(epoch: int, scratch: Path) -> Layer:
    """Built afresh each time (it is what changes), in `scratch`."""
    stage = scratch / "stage"
    site = stage / SITE_PACKAGES
    wheels = scratch / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    log("app layer: digestguard and its dependencies, at the versions installed here")
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(ROOT)], check=True)
    constraints = scratch / "constraints.txt"
    frozen = subprocess.run(
        [*pip, "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
    ).stdout
    constraints.write_text(frozen)
    (wheel,) = wheels.glob("digestguard-*.whl")
    subprocess.run(
        [
            *pip,
            "install",
            "--target",
            str(site),
            "--no-compile",
            "--only-binary=:all:",
            # Wheels for the image's interpreter and C library, whatever this machine's.
            *("--implementation", "cp", "--python-version", IMAGE_PYTHON, "--abi", "cp311"),
            *(arg for platform in IMAGE_PLATFORMS for arg in ("--platform", platform)),
            "--constraint",
            str(constraints),
            str(wheel),
        ],
        check=True,
    )
    shutil.rmtree(site / "bin", ignore_errors=True)  # scripts for this machine's python
    # Where the wheel was built (a temporary path): not the image's business, nor stable.
    for direct_url in site.glob("*.dist-info/direct_url.json"):
        direct_url.unlink()
        record = direct_url.parent / "RECORD"
        record.write_text(
            "".join(
                line
                for line in record.read_text().splitlines(keepends=True)
                if not line.startswith(f"{direct_url.parent.name}/direct_url.json,")
            )
        )
    # Compiled ahead, valid whatever the files' times: the image's root is read-only.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            str(stage),
            "-p",
            "/",
            str(site),
        ],
        check=True,
    )
    entry = stage / ENTRY_POINT
    entry.parent.mkdir(parents=True)
    entry.write_text(ENTRY_POINT_SCRIPT)
    entry.chmod(0o755)
    path_file = stage / PATH_FILE
    path_file.parent.mkdir(parents=True)
    path_file.write_text(f"/{SITE_PACKAGES}\n")
    tar = scratch / "app.tar"
    _tar(stage, tar, epoch)
    layer = _compress(tar, scratch / "layer")
    tar.unlink()
    log(f"app layer: {layer.size / 2**20:.1f} MiB compressed")
    return layer


def _tar(stage: Path, target: Path, epoch: int) -> None:
    """A reproducible tar of `stage`: sorted, owned by root, every time `epoch`."""

    def entries() -> Iterator[Path]:
        for directory, subdirectories, files in os.walk(stage):
            subdirectories.sort()
            base = Path(directory)
            if base != stage:
                yield base
            for name in sorted(files):
                yield base / name

    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as archive:
        for path in entries():
            info = archive.gettarinfo(str(path), arcname=str(path.relative_to(stage)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = epoch
            if info.isdir():
                info.mode = 0o755
                archive.addfile(info)
            else:
                info.mode = 0o755 if path.stat().st_mode & 0o100 else 0o644
                with path.open("rb") as content:
                    archive.addfile(info, content)


def _compress(tar: Path, directory: Path) -> Layer:
    directory.mkdir(parents=True, exist_ok=True)
    compressed = directory / "layer.tar.gz"
    tar_hash = hashlib.sha256()
    with (
        tar.open("rb") as source,
        compressed.open("wb") as sink,
        gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0) as zipped,
    ):
        while chunk := source.read(1 << 20):
            tar_hash.update(chunk)
            zipped.write(chunk)
    layer = Layer(
        compressed,
        "sha256:" + _sha256_file(compressed),
        "sha256:" + tar_hash.hexdigest(),
        compressed.stat().st_size,
    )
    (directory / "layer.json").write_text(
        json.dumps({"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size})
    )
    return layer


def _layer_from(directory: Path) -> Layer:
    meta = json.loads((directory / "layer.json").read_text())
    return Layer(directory / "layer.tar.gz", meta["digest"], meta["diff_id"], meta["size"])


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------
# The OCI image layout
# --------------------------------------------------------------------------


def image_config(layers: list[Layer], version: str, epoch: int) -> dict[str, Any]:
    created = _rfc3339(epoch)
    return {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": f"{USER}:{USER}",
            "Entrypoint": ["digestguard"],
            "Cmd": ["serve"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.title": "digestguard",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.licenses": "Apache-2.0",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": created, "created_by": f"mmdebstrap {SUITE}: {' '.join(BASE_PACKAGES)}"},
            {"created": created, "created_by": "hack/image.py: digestguard " + version},
        ],
    }


def write_layout(output: Path, tag: str, layers: list[Layer], version: str, epoch: int) -> str:
    """Write the layout (replacing any other in `output`); return the manifest digest."""
    blobs = output / "blobs" / "sha256"
    if output.exists():
        shutil.rmtree(output)
    blobs.mkdir(parents=True)

    def put(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    for layer in layers:
        target = blobs / layer.digest.removeprefix("sha256:")
        try:
            os.link(layer.path, target)
        except OSError:
            shutil.copyfile(layer.path, target)
    config_digest, config_size = put(_canonical(image_config(layers, version, epoch)))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size} for layer in layers
        ],
        "annotations": {"org.opencontainers.image.version": version},
    }
    manifest_digest, manifest_size = put(_canonical(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (output / "index.json").write_bytes(_canonical(index))
    (output / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": "1.0.0"}))
    size = sum(layer.size for layer in layers) / 2**20
    log(f"wrote {output} (tag {tag}, {size:.1f} MiB): {manifest_digest}")
    return manifest_digest


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def _rfc3339(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    sys.exit(main())
