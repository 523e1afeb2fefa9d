"""The webhook container of an installed Deployment, run on this machine as a process.

What the kubelet would do with the Deployment's pod template, done here:

- the container's `command` and `args` verbatim; `digestguard`, the image's entry
  point, is the console script this virtualenv installed from `pyproject.toml`;
- the container's `env`, with downward-API fields resolved for the pod;
- each volume a directory of its own (emptyDir empty, configMap filled from the
  apiserver's ConfigMap), and paths inside a mount rewritten to that directory;
- an environment holding only that (plus PATH and HOME), not the test runner's.

What a cluster hands a pod besides its manifest is passed in as `stand_ins`: the
ServiceAccount's token (as a kubeconfig, where the pod would have the token mount),
AWS credentials (where IRSA would have them), the ECR endpoint (an emulator).
Anything in the manifest this cannot reproduce (a Secret volume, a resource-field
reference, `$(VAR)` expansion) fails loudly rather than being skipped.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.support.webhook_process import ServeProcess

VIRTUALENV_BIN = Path(sys.executable).parent


class UnsupportedManifest(AssertionError):
    """The manifest uses something a local process cannot be given faithfully."""


class DeployedContainer(ServeProcess):
    """The single container of `deployment`, as the pod `pod_name` in `root`."""

    def __init__(
        self,
        *,
        api: client.ApiClient,
        deployment: Mapping[str, Any],
        pod_name: str,
        root: Path,
        stand_ins: Mapping[str, str],
    ) -> None:
        self.namespace: str = deployment["metadata"]["namespace"]
        self.pod_name = pod_name
        self.pod_spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
        (self.container,) = self.pod_spec["containers"]
        self.stand_ins = dict(stand_ins)
        self.volumes = _materialise_volumes(api, self.namespace, self.pod_spec, root / "volumes")
        ports = {port["name"]: int(port["containerPort"]) for port in self.container["ports"]}
        super().__init__(workdir=root, port=ports["https"], health_port=ports["health"], cwd=root)

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
        entry, *rest = [*self.container["command"], *self.container.get("args", ())]
        executable = VIRTUALENV_BIN / entry
        if not executable.exists():
            raise UnsupportedManifest(f"entry point {entry!r} is not installed in {VIRTUALENV_BIN}")
        return [str(executable), *(self._rewrite(arg) for arg in rest)]

    def _rewrite(self, arg: str) -> str:
        if "$(" in arg:
            raise UnsupportedManifest(f"argument {arg!r} uses $(VAR) expansion")
        flag, equals, value = arg.partition("=")
        if equals and flag.startswith("--"):
            return f"{flag}={self.host_path(value)}"
        return self.host_path(arg)

    def environment(self) -> dict[str, str]:
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
    directories: dict[str, Path] = {}
    for volume in pod_spec.get("volumes", ()):
        directory = root / volume["name"]
        directory.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            config_map = client.CoreV1Api(api).read_namespaced_config_map(name, namespace)
            for key, text in (config_map.data or {}).items():
                (directory / key).write_text(text)
        elif "emptyDir" not in volume:
            kinds = sorted(set(volume) - {"name"})
            raise UnsupportedManifest(f"volume {volume['name']}: {kinds} is not supported")
        directories[volume["name"]] = directory
    return directories
