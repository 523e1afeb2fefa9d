"""When a replica sheds admissions: the event loop's lag, measured, against its rules.

Measurements are fed in directly (lag, loop time, the loop thread's CPU time), so nothing here
depends on how busy the machine is.
"""

from webhook.serving import server

LIMIT = server.DEFAULT_SHED_LAG
PROBE = server.LAG_PROBE


def fresh() -> server.AdmissionServer:
    return server.AdmissionServer(
        address="127.0.0.1", port=0, certfile=None, keyfile=None, answer_within=10.0
    )


class Feed:
    """Measurements one after another, each `PROBE` plus its lag after the last, the
    event loop's thread busy `cpu_share` of the time meanwhile."""

    def __init__(self, replica: server.AdmissionServer) -> None:
        self.replica, self.now, self.cpu = replica, 0.0, 0.0

    def __call__(self, lags: list[float], *, cpu_share: float = 1.0) -> None:
        for lag in lags:
            step = PROBE + lag
            self.now += step
            self.cpu += step * cpu_share
            self.replica.observe_lag(lag, self.now, self.cpu)


def test_a_loop_that_keeps_up_never_sheds() -> None:
    replica = fresh()
    feed = Feed(replica)
    feed([0.001] * 1000)
    assert not replica.shedding


def test_one_long_pause_is_not_overload() -> None:
    replica = fresh()
    feed = Feed(replica)
    feed([0.0005, 0.5, 0.0005, 0.0005])
    assert not replica.shedding


def test_a_lag_that_lasts_with_the_process_busy_sheds() -> None:
    replica = fresh()
    feed = Feed(replica)
    # 20 ms late at every measurement, 25 ms apart: 200 ms after the first lagging one.
    feed([0.02] * 7)
    assert not replica.shedding
    feed([0.02] * 3)
    assert replica.shedding


def test_a_lag_the_process_did_not_cause_is_left_alone() -> None:
    replica = fresh()
    feed = Feed(replica)
    # The node, or another thread holding the GIL, is busy: the loop's thread used a
    # tenth of a core meanwhile.
    feed([0.02] * 100, cpu_share=0.1)
    assert not replica.shedding


def test_overloaded_it_refuses_only_while_the_last_measurement_lags() -> None:
    replica = fresh()
    feed = Feed(replica)
    feed([0.02] * 10)
    assert replica.shedding
    feed([0.001])
    assert not replica.shedding  # caught up: the next admissions are served
    feed([0.006])
    assert replica.shedding  # and at once refused again, no 200 ms to wait this time


def test_overload_ends_after_a_second_without_lag() -> None:
    replica = fresh()
    feed = Feed(replica)
    feed([0.02] * 10)
    # A second of measurements that keep up, then one lag: that is not overload yet.
    feed([0.001] * 200)
    feed([0.02])
    assert not replica.shedding


def test_zero_turns_shedding_off() -> None:
    replica = fresh()
    feed = Feed(replica)
    replica.shed_lag = 0
    feed([1.0] * 20)
    assert not replica.shedding


def test_overloaded_it_refuses_as_soon_as_the_next_measurement_is_overdue() -> None:
    replica = fresh()
    feed = Feed(replica)
    feed([0.02] * 10)
    feed([0.001])
    assert not replica.shedding
    replica._clock = lambda: feed.now + PROBE  # the next measurement is due just now
    replica._probe_due = feed.now + PROBE
    assert not replica.sheds()
    # The loop has not come round to it 6 ms later: it lags now, before it measures so.
    replica._clock = lambda: feed.now + PROBE + 0.006
    assert replica.sheds()


def test_a_replica_that_is_not_overloaded_never_sheds_on_an_overdue_measurement() -> None:
    replica = fresh()
    replica._clock = lambda: 100.0
    replica._probe_due = 1.0
    assert not replica.sheds()
