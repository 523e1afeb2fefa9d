"""The container image `hack/image.py` builds: what the chart expects of it, and that a
real registry takes it and digestguard pins it.

The image is also run as the chart's Deployment in `test_chart_install.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import ecr_emulator, oci_registry
from tests.support.cluster import render_chart

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def deployment(helm_binary: Path) -> dict[str, Any]:
    rendered = render_chart(
        helm_binary,
        release="dg",
        namespace="digestguard",
        values={},
        templates=["templates/deployment.yaml"],
    )
    found: dict[str, Any] = next(doc for doc in rendered if doc["kind"] == "Deployment")
    return found


def test_the_image_runs_as_the_user_the_chart_runs_it_as(
    webhook_image: Any, deployment: dict[str, Any]
) -> None:
    config = webhook_image.layout.config["config"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = pod["securityContext"]
    assert config["User"] == f"{security['runAsUser']}:{security['runAsGroup']}"
    # The chart names the entry point by name; the image's PATH finds it.
    assert config["Entrypoint"] == container["command"][:1]
    assert config["Cmd"] == container["command"][1:]
    passwd = (webhook_image.rootfs / "etc" / "passwd").read_text()
    assert f":{security['runAsUser']}:{security['runAsGroup']}:" in passwd
    entry = webhook_image.rootfs / "usr" / "local" / "bin" / "digestguard"
    assert entry.stat().st_mode & 0o111


def test_the_image_holds_nothing_it_would_write_at_run_time(webhook_image: Any) -> None:
    """Compiled ahead, every module: with a read-only root Python cannot cache them."""
    site = webhook_image.rootfs / "opt" / "digestguard" / "site-packages"
    sources = {path.with_suffix("") for path in (site / "webhook").glob("*.py")}
    compiled = {
        path.parent.parent / path.name.split(".")[0]
        for path in (site / "webhook" / "__pycache__").glob("*.pyc")
    }
    assert sources
    assert sources <= compiled


def test_a_registry_takes_the_image_and_digestguard_pins_it(webhook_image: Any) -> None:
    layout = webhook_image.layout
    manifest = layout.blob(layout.digest).read_bytes()
    with oci_registry.running_registry() as registry:
        for layer in layout.manifest["layers"]:
            assert registry.push_blob("digestguard", layout.blob(layer["digest"]).read_bytes())
        config_digest = layout.manifest["config"]["digest"]
        assert registry.push_blob("digestguard", layout.blob(config_digest).read_bytes()) == (
            config_digest
        )
        pushed = registry.push_manifest(
            "digestguard", "0.1.0", manifest, layout.manifest["mediaType"]
        )
        assert pushed == layout.digest == ecr_emulator.digest_of(manifest)

        resolved = subprocess.run(
            [
                sys.executable,
                "-m",
                "webhook",
                "resolve",
                "--insecure-registries",
                registry.host,
                registry.image("digestguard", "0.1.0"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert resolved.returncode == 0, resolved.stderr
    assert resolved.stdout.strip() == registry.image("digestguard", "0.1.0", layout.digest)


def test_the_layout_is_one_a_copy_tool_reads(webhook_image: Any) -> None:
    layout = webhook_image.layout.path
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["digest"] == webhook_image.layout.digest
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "0.1.0"
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    for descriptor in [
        webhook_image.layout.manifest["config"],
        *webhook_image.layout.manifest["layers"],
    ]:
        blob = webhook_image.layout.blob(descriptor["digest"])
        assert blob.stat().st_size == descriptor["size"]
