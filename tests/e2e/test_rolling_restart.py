"""Rolling restarts lose nothing: two webhook processes behind a stand-in for their Service.

The chart runs two replicas behind a Service with `failurePolicy: Fail`, so a pod
creation that meets a replica going away fails. Here two `digestguard serve` processes
sit behind `ServiceProxy` (new connections go to ready backends only, as kube-proxy
sends them), the chart's webhook configurations call the proxy, and pods are created
at a steady rate while each replica is restarted in turn, three times over: SIGTERM,
wait for the exit, start a new process, as a Deployment's rolling update does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support import cluster
from tests.support.controlplane import ControlPlane
from tests.support.service_proxy import Backend, ServiceProxy
from tests.support.webhook_process import WebhookProcess

pytestmark = pytest.mark.e2e

PODS_AT_LEAST = 1000
RATE = 25.0
"""Pod creations per second, spread over `CREATORS` clients."""
CREATORS = 4
ROUNDS = 3
SHUTDOWN_DELAY = "2s"
"""Long enough for the proxy (probing every 0.1 s) to stop sending new connections."""


class Replicas:
    """Two webhook processes whose current ones are the proxy's backends."""

    def __init__(self, make: Any, proxy: ServiceProxy) -> None:
        self.make = make
        self.proxy = proxy
        self.processes: list[WebhookProcess] = []
        self.exit_codes: list[int | None] = []

    def start(self, count: int) -> None:
        for _ in range(count):
            self.processes.append(self.make().start())
        self._publish()

    def restart(self, index: int) -> None:
        old = self.processes[index]
        self.exit_codes.append(old.stop(within=60))
        new = self.make().start()
        self.processes[index] = new
        self._publish()
        cluster.eventually(
            "the new replica to be routed to",
            lambda: Backend(new.port, new.health_port) in self.proxy.ready,
            30,
        )

    def stop(self) -> None:
        for process in self.processes:
            process.stop()

    def _publish(self) -> None:
        self.proxy.backends = [
            Backend(p.port, p.health_port)
            for p in self.processes
            if p.process is not None and p.process.poll() is None
        ]


class Creator(threading.Thread):
    """Creates pods at its share of `RATE` until told to stop; records every answer."""

    def __init__(
        self, plane: ControlPlane, namespace: str, image: str, index: int, stop: threading.Event
    ) -> None:
        super().__init__(name=f"creator-{index}", daemon=True)
        self.plane = plane
        self.namespace = namespace
        self.image = image
        self.index = index
        self.stop_flag = stop
        self.created = 0
        self.failures: list[str] = []
        self.unpinned: list[str] = []

    def run(self) -> None:
        interval = CREATORS / RATE
        due = time.monotonic() + self.index * interval / CREATORS
        with self.plane.new_api_client() as api:
            core = client.CoreV1Api(api)
            n = 0
            while not self.stop_flag.is_set():
                time.sleep(max(0.0, due - time.monotonic()))
                due = max(due + interval, time.monotonic() - interval)
                name = f"p{self.index}-{n}"
                n += 1
                answer = cluster.call(
                    core.create_namespaced_pod, self.namespace, cluster.pod(name, self.image)
                )
                if not answer.ok:
                    self.failures.append(f"{name}: {answer.status} {answer.message}")
                    continue
                self.created += 1
                if "@sha256:" not in cluster.images_of(answer.body)["c0"]:
                    self.unpinned.append(name)


@pytest.fixture
def proxy() -> Iterator[ServiceProxy]:
    with ServiceProxy() as service:
        yield service


def test_three_rolling_restarts_of_two_replicas_fail_no_pod_creation(
    control_plane: ControlPlane,
    helm_binary: Path,
    kube: Any,
    policy_crd: str,
    ecr: Any,
    loopback_tls: cluster.LoopbackTLS,
    new_webhook: Any,
    proxy: ServiceProxy,
    make_namespace: Any,
    make_policy: Any,
) -> None:
    release = cluster.unique("rolling")
    scope = {cluster.SCOPE_LABEL: release}
    namespace = make_namespace(None, **scope)
    repository = cluster.unique("e2e/rolling")
    ecr.push(repository, "v1")

    def make() -> WebhookProcess:
        # A process as every e2e webhook's, registered here through the proxy instead.
        arguments = ["--shutdown-delay", SHUTDOWN_DELAY, "--log-level", "info"]
        process: WebhookProcess = new_webhook(extra_args=arguments).process
        return process

    replicas = Replicas(make, proxy)
    stop = threading.Event()
    creators: list[Creator] = []
    rendered = cluster.render_webhook_configurations(
        helm_binary,
        release=release,
        namespace="digestguard",
        values=cluster.scoped_values(release),
    )
    try:
        replicas.start(2)
        # Created once a replica runs: it reports the policy accepted, then enforces it.
        make_policy(
            {
                "images": ["*.dkr.ecr.*.amazonaws.com/**"],
                "namespaceSelector": cluster.only_in(namespace),
            }
        )
        with cluster.Registration(
            kube,
            cluster.point_at(rendered, f"https://127.0.0.1:{proxy.port}", loopback_tls.ca_bundle),
        ):
            cluster.eventually("both replicas to be routed to", lambda: len(proxy.ready) == 2, 30)
            creators = [
                Creator(control_plane, namespace, ecr.image(repository, "v1"), i, stop)
                for i in range(CREATORS)
            ]
            for creator in creators:
                creator.start()
            cluster.eventually("the first pods", lambda: sum(c.created for c in creators) >= 50, 60)
            for _ in range(ROUNDS):
                for index in range(2):
                    replicas.restart(index)
            cluster.eventually(
                f"{PODS_AT_LEAST} pod creations",
                lambda: sum(c.created + len(c.failures) for c in creators) >= PODS_AT_LEAST,
                300,
            )
            stop.set()
            for creator in creators:
                creator.join(60)
    finally:
        stop.set()
        replicas.stop()

    created = sum(c.created for c in creators)
    failures = [failure for c in creators for failure in c.failures]
    assert failures == [], f"{len(failures)} of {created + len(failures)} failed: {failures[:5]}"
    assert created >= PODS_AT_LEAST
    assert [name for c in creators for name in c.unpinned] == []
    # Every replica the rollout replaced stopped cleanly, after draining.
    assert replicas.exit_codes == [0] * (ROUNDS * 2)
    # The proxy really spread connections over the replicas, old and new.
    assert len(proxy.routed) >= 2 + ROUNDS * 2 - 1, proxy.routed
    assert proxy.unrouted == 0
