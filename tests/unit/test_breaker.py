"""A registry endpoint whose calls keep failing is not asked again until a probe succeeds."""

import pytest

from webhook import metrics
from webhook.registries import breaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def circuit(clock: FakeClock, endpoint: str = "registry.example") -> breaker.Breaker:
    return breaker.Breaker(endpoint, failures_to_open=3, cool_down=1.0, clock=clock)


def test_a_new_circuit_lets_calls_through(clock: FakeClock) -> None:
    assert circuit(clock).allow()


def test_fewer_failures_than_the_threshold_keep_it_closed(clock: FakeClock) -> None:
    c = circuit(clock)
    c.failed("refused")
    c.failed("refused")
    assert c.state is breaker.State.CLOSED
    assert c.allow()


def test_a_success_resets_the_count_of_failures(clock: FakeClock) -> None:
    c = circuit(clock)
    c.failed("refused")
    c.failed("refused")
    c.succeeded()
    c.failed("refused")
    assert c.state is breaker.State.CLOSED


def test_consecutive_failures_open_it(clock: FakeClock) -> None:
    c = circuit(clock)
    for _ in range(3):
        c.failed("connection refused")
    assert c.state is breaker.State.OPEN
    assert not c.allow()
    assert "3 calls in a row failed (last: connection refused)" in c.refusal()


def test_after_the_cool_down_exactly_one_probe_goes_out(clock: FakeClock) -> None:
    c = circuit(clock)
    for _ in range(3):
        c.failed("refused")
    clock.now += 0.5
    assert not c.allow()
    clock.now += 0.5
    assert [c.allow() for _ in range(5)] == [True, False, False, False, False]
    assert c.state is breaker.State.HALF_OPEN


def test_a_successful_probe_closes_it(clock: FakeClock) -> None:
    c = circuit(clock)
    for _ in range(3):
        c.failed("refused")
    clock.now += 1.0
    assert c.allow()
    c.succeeded()
    assert c.state is breaker.State.CLOSED
    assert all(c.allow() for _ in range(5))


def test_a_failed_probe_opens_it_for_another_cool_down(clock: FakeClock) -> None:
    c = circuit(clock)
    for _ in range(3):
        c.failed("refused")
    clock.now += 1.0
    assert c.allow()
    c.failed("still refused")
    assert c.state is breaker.State.OPEN
    clock.now += 0.9
    assert not c.allow()
    clock.now += 0.1
    assert c.allow()


def test_the_state_and_its_changes_are_metrics(clock: FakeClock) -> None:
    c = circuit(clock, endpoint="metrics.example")

    def state(name: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(
            "digestguard_registry_circuit", {"endpoint": "metrics.example", "state": name}
        )

    assert (state("closed"), state("open")) == (1.0, 0.0)
    for _ in range(3):
        c.failed("refused")
    assert (state("closed"), state("open"), state("half-open")) == (0.0, 1.0, 0.0)
    opened = metrics.REGISTRY.get_sample_value(
        "digestguard_registry_circuit_transitions_total",
        {"endpoint": "metrics.example", "to": "open"},
    )
    assert opened == 1.0
