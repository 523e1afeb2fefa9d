"""Fixtures for tests that run against a real local control plane.

The binaries come from ``hack/envtest-assets.sh`` (or ``KUBEBUILDER_ASSETS``).
Without them every test that needs the control plane is skipped, loudly; with
``DIGESTGUARD_REQUIRE_E2E=1`` (CI) a missing binary is a failure instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # `pytest` run without the checkout on sys.path
    sys.path.insert(0, str(_ROOT))

from tests.support.controlplane import ControlPlane, find_assets, find_helm  # noqa: E402

MISSING_ASSETS = (
    "E2E SKIPPED: control-plane binaries not found; "
    "run hack/envtest-assets.sh or set KUBEBUILDER_ASSETS"
)

_skipped_for_missing_assets = False


def _require_assets() -> Path:
    global _skipped_for_missing_assets
    assets = find_assets()
    if assets is not None:
        return assets
    if os.environ.get("DIGESTGUARD_REQUIRE_E2E") == "1":
        pytest.fail(MISSING_ASSETS.replace("E2E SKIPPED", "E2E REQUIRED"), pytrace=False)
    _skipped_for_missing_assets = True
    pytest.skip(MISSING_ASSETS)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped_for_missing_assets:
        terminalreporter.write_sep("!", MISSING_ASSETS, red=True, bold=True)


@pytest.fixture(scope="session")
def control_plane_assets() -> Path:
    """The directory with etcd, kube-apiserver and kube-controller-manager."""
    return _require_assets()


@pytest.fixture(scope="session")
def control_plane(
    control_plane_assets: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """One etcd + kube-apiserver + kube-controller-manager for the whole session.

    Logs stay in the work dir under pytest's basetemp (``controlplane0/*.log``).
    """
    work_dir = tmp_path_factory.mktemp("controlplane")
    with ControlPlane(control_plane_assets, work_dir) as plane:
        yield plane


@pytest.fixture(scope="session")
def helm_binary(control_plane_assets: Path) -> Path:
    helm = find_helm(control_plane_assets)
    if helm is None:
        if os.environ.get("DIGESTGUARD_REQUIRE_E2E") == "1":
            pytest.fail("E2E REQUIRED: helm not found; run hack/envtest-assets.sh", pytrace=False)
        pytest.skip("E2E SKIPPED: helm not found; run hack/envtest-assets.sh")
    return helm
