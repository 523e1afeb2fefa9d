"""Session fixtures for every test that runs against the real local control plane.

The binaries come from ``hack/envtest-assets.sh`` (or ``KUBEBUILDER_ASSETS``).
Without them every test that needs the control plane is skipped, loudly; with
``DIGESTGUARD_REQUIRE_E2E=1`` (CI) a missing binary is a failure instead. The
fixtures live here, not under ``tests/e2e``, so that integration tests that only
need an apiserver to watch (the webhook indexes DigestPolicies) share the same one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # `pytest` run without the checkout on sys.path
    sys.path.insert(0, str(_ROOT))

from tests.support.controlplane import ControlPlane, find_assets, find_helm  # noqa: E402

MISSING_ASSETS = (
    "E2E SKIPPED: control-plane binaries not found; "
    "run hack/envtest-assets.sh or set KUBEBUILDER_ASSETS"
)
MISSING_HELM = "E2E SKIPPED: helm not found; run hack/envtest-assets.sh"

_skip_reasons: set[str] = set()


def _required() -> bool:
    return os.environ.get("DIGESTGUARD_REQUIRE_E2E") == "1"


def _skip_or_fail(reason: str) -> None:
    if _required():
        pytest.fail(reason.replace("E2E SKIPPED", "E2E REQUIRED"), pytrace=False)
    _skip_reasons.add(reason)
    pytest.skip(reason)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every skip for a missing peer (control plane, registry, image) as a red banner."""
    reasons = set(_skip_reasons)
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        if isinstance(longrepr, tuple) and " SKIPPED: " in f" {longrepr[2]}":
            reasons.add(str(longrepr[2]).removeprefix("Skipped: "))
    for reason in sorted(reasons):
        terminalreporter.write_sep("!", reason, red=True, bold=True)


@pytest.fixture(scope="session")
def control_plane_assets() -> Path:
    """The directory with etcd, kube-apiserver and kube-controller-manager."""
    assets = find_assets()
    if assets is None:
        _skip_or_fail(MISSING_ASSETS)
    assert assets is not None
    return assets


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
        _skip_or_fail(MISSING_HELM)
    assert helm is not None
    return helm
