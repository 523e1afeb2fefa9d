"""The webhook container of an installed Deployment, run on this machine as a process.

What the kubelet would do with the Deployment's pod template, done here:

- the container's `command` and `args` verbatim;
- the container's `env`, with downward-API fields resolved for the pod;
- each volume a directory of its own (emptyDir empty, configMap filled from the
  apiserver's ConfigMap);
- an environment holding only that, not the test runner's.

Two ways to run it:

- **from the image** (`image=`): the image built by `hack/image.py`, unpacked, run
  in its own mount namespace as the pod's user with a read-only root, the volumes
  mounted at their paths and the ServiceAccount token where the kubelet puts it
  (`tests.support.image`);
- **from this virtualenv** (no `image`): `digestguard` is the console script installed
  from `pyproject.toml`, and paths inside a mount are rewritten to the volume's
  directory; needs no root.

What a cluster hands a pod besides its manifest is passed in: `stand_ins` (AWS
credentials where IRSA would put them, the ECR endpoint of an emulator, and without
an image a kubeconfig for the ServiceAccount) and `extra_mounts` (the token
directory). Anything in the manifest this cannot reproduce (a Secret volume, a
resource-field reference, `$(VAR)` expansion) fails loudly rather than being skipped.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.support import image as images
from tests.support.webhook_process import ServeProcess

VIRTUALENV_BIN = Path(sys.executable).parent


class UnsupportedManifest(AssertionError):
    """The manifest uses something a local process cannot be given faithfully."""


class DeployedContainer(ServeProcess):
    """The single container of `workload` (a Deployment, or a Pod), as the pod `pod_name`
    in `root`. Started as a server (`start`, `stop`: ports named https and health), or
    run to its end (`run`)."""

    def __init__(
        self,
        *,
        api: client.ApiClient,
        workload: Mapping[str, Any],
        pod_name: str,
        root: Path,
        stand_ins: Mapping[str, str],
        image: tuple[Path, Mapping[str, Any]] | None = None,
        extra_mounts: Mapping[str, Path] | None = None,
        host_aliases: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """`image` is (unpacked root filesystem, image config); `extra_mounts` maps
        container paths to directories mounted read-only there, and `host_aliases` adds
        names to /etc/hosts as the pod field `hostAliases` does (with an image only)."""
        self.namespace: str = workload["metadata"]["namespace"]
        self.pod_name = pod_name
        spec = workload["spec"]
        self.pod_spec: dict[str, Any] = spec["template"]["spec"] if "template" in spec else spec
        (self.container,) = self.pod_spec["containers"]
        self.stand_ins = dict(stand_ins)
        self.image = image
        self.extra_mounts = dict(extra_mounts or {})
        self.host_aliases = dict(host_aliases or {})
        if (self.extra_mounts or self.host_aliases) and image is None:
            raise UnsupportedManifest("extra mounts and host aliases need an image")
        self.volumes = _materialise_volumes(api, self.namespace, self.pod_spec, root / "volumes")
        ports = {
            port["name"]: int(port["containerPort"]) for port in self.container.get("ports", ())
        }
        super().__init__(
            workdir=root, port=ports.get("https", 0), health_port=ports.get("health", 0), cwd=root
        )

    def run(self, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the container to its end; its output is in `stdout`."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        return subprocess.run(
            self.command(),
            env=self.environment(),
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @property
    def mounts(self) -> dict[str, Path]:
        """Container path of each mount → the directory standing in for its volume."""
        return {
            mount["mountPath"]: self.volumes[mount["name"]]
            for mount in self.container.get("volumeMounts", ())
        }

    def host_path(self, container_path: str) -> str:
        """Where a path inside the container is on this machine (itself if in no mount)."""
        for mount_path in sorted(self.mounts, key=len, reverse=True):
            if container_path == mount_path or container_path.startswith(mount_path + "/"):
                return str(self.mounts[mount_path]) + container_path[len(mount_path) :]
        return container_path

    @property
    def flags(self) -> dict[str, str]:
        """The container's `--name=value` arguments, by name, as written in the manifest."""
        return dict(arg[2:].split("=", 1) for arg in self.container["args"])

    def command(self) -> list[str]:
        argv = [*self.container["command"], *self.container.get("args", ())]
        for arg in argv:
            if "$(" in arg:
                raise UnsupportedManifest(f"argument {arg!r} uses $(VAR) expansion")
        if self.image is not None:
            return self._in_image(self.image[0], argv)
        entry, *rest = argv
        executable = VIRTUALENV_BIN / entry
        if not executable.exists():
            raise UnsupportedManifest(f"entry point {entry!r} is not installed in {VIRTUALENV_BIN}")
        return [str(executable), *(self._rewrite(arg) for arg in rest)]

    def _in_image(self, rootfs: Path, argv: list[str]) -> list[str]:
        volumes = {volume["name"]: volume for volume in self.pod_spec.get("volumes", ())}
        mounts = []
        for mount in self.container.get("volumeMounts", ()):
            volume = volumes[mount["name"]]
            mounts.append(
                images.Mount(
                    source=self.volumes[mount["name"]],
                    target=mount["mountPath"],
                    read_only=bool(mount.get("readOnly")) or "configMap" in volume,
                    memory=(volume.get("emptyDir") or {}).get("medium") == "Memory",
                )
            )
        for target, source in self.extra_mounts.items():
            mounts.append(images.Mount(source=source, target=target, read_only=True))
        hosts = Path("/etc/hosts")
        if self.host_aliases:
            hosts = self.workdir / "hosts"
            self.workdir.mkdir(parents=True, exist_ok=True)
            aliases = "".join(
                f"{address}\t{' '.join(names)}\n" for address, names in self.host_aliases.items()
            )
            hosts.write_text(Path("/etc/hosts").read_text() + aliases)
        images.prepare_mount_points(rootfs, mounts)
        security = {
            **(self.pod_spec.get("securityContext") or {}),
            **(self.container.get("securityContext") or {}),
        }
        return images.run_command(
            rootfs,
            mounts,
            argv,
            user=int(security["runAsUser"]),
            group=int(security["runAsGroup"]),
            read_only_root=bool(security.get("readOnlyRootFilesystem")),
            no_new_privs=security.get("allowPrivilegeEscalation") is False,
            hosts=hosts,
        )

    def _rewrite(self, arg: str) -> str:
        flag, equals, value = arg.partition("=")
        if equals and flag.startswith("--"):
            return f"{flag}={self.host_path(value)}"
        return self.host_path(arg)

    def environment(self) -> dict[str, str]:
        if self.image is not None:
            env = images.image_environment(self.image[1])
        else:
            env = {"PATH": f"{VIRTUALENV_BIN}:/usr/bin:/bin", "HOME": str(self.workdir)}
        for item in self.container.get("env", ()):
            env[item["name"]] = self._value_of(item)
        return {**env, **self.stand_ins}

    def _value_of(self, item: Mapping[str, Any]) -> str:
        if "valueFrom" not in item:
            value = str(item.get("value", ""))
            if re.search(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", value):
                raise UnsupportedManifest(f"env {item['name']} uses $(VAR) expansion")
            return value
        field = item["valueFrom"].get("fieldRef", {}).get("fieldPath")
        downward = {"metadata.namespace": self.namespace, "metadata.name": self.pod_name}
        if field not in downward:
            raise UnsupportedManifest(f"env {item['name']}: {item['valueFrom']} is not supported")
        return downward[field]


def _materialise_volumes(
    api: client.ApiClient, namespace: str, pod_spec: Mapping[str, Any], root: Path
) -> dict[str, Path]:
    """A directory per volume, filled as the kubelet fills it (ConfigMap and Secret keys,
    or the `items` chosen of them)."""
    core = client.CoreV1Api(api)
    directories: dict[str, Path] = {}
    for volume in pod_spec.get("volumes", ()):
        directory = root / volume["name"]
        directory.mkdir(parents=True, exist_ok=True)
        group = (pod_spec.get("securityContext") or {}).get("fsGroup")
        if "configMap" in volume:
            source = volume["configMap"]
            found = core.read_namespaced_config_map(source["name"], namespace).data or {}
            data = {key: text.encode() for key, text in found.items()}
            _project(directory, data, source, group)
        elif "secret" in volume:
            source = volume["secret"]
            found = core.read_namespaced_secret(source["secretName"], namespace).data or {}
            data = {key: base64.b64decode(value) for key, value in found.items()}
            _project(directory, data, source, group)
        elif "emptyDir" not in volume:
            kinds = sorted(set(volume) - {"name"})
            raise UnsupportedManifest(f"volume {volume['name']}: {kinds} is not supported")
        directories[volume["name"]] = directory
    return directories


def _project(
    directory: Path, data: Mapping[str, bytes], source: Mapping[str, Any], group: int | None
) -> None:
    """Write the keys as the kubelet does: the item's mode or the volume's defaultMode
    (0644 if neither), group-owned by the pod's fsGroup when it has one."""
    items = source.get("items") or [{"key": key, "path": key} for key in data]
    for item in items:
        if item["key"] not in data:
            # The kubelet would not start the pod: the volume cannot be made.
            raise AssertionError(f"volume source {dict(source)} has no key {item['key']!r}")
        target = directory / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[item["key"]])
        target.chmod(int(item.get("mode", source.get("defaultMode", 0o644))))
        if group is not None and os.geteuid() == 0:
            os.chown(target, 0, int(group))
