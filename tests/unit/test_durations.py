"""Durations as Kubernetes users write them (Go `time.ParseDuration`, non-negative)."""

import pytest

from webhook import errors
from webhook.core import durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("90s", 90.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1h0m0s", 3600.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("0.5s", 0.5),
        ("2h45m30s500ms", 9930.5),
        ("30s1m", 90.0),
    ],
)
def test_duration_is_read_in_seconds(text: str, seconds: float) -> None:
    assert durations.parse_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10",
        "m",
        "-5m",
        "+5m",
        "10d",
        "1w",
        "5us",
        "5ns",
        "10 m",
        " 10m",
        "10m ",
        "10M",
        "1.5.5s",
        ".5s",
        "5.s",
        "1e3s",
        "10mm",
        "infs",
        "nan",
    ],
)
def test_text_that_is_not_a_duration_is_refused(text: str) -> None:
    with pytest.raises(errors.InvalidDuration):
        durations.parse_seconds(text)


def test_digits_of_other_scripts_are_refused() -> None:
    with pytest.raises(errors.InvalidDuration):
        durations.parse_seconds("\u0663m")


def test_duration_too_large_to_represent_is_refused() -> None:
    with pytest.raises(errors.InvalidDuration):
        durations.parse_seconds("9" * 400 + "h")


def test_refusal_quotes_the_text_and_gives_examples() -> None:
    with pytest.raises(errors.InvalidDuration) as caught:
        durations.parse_seconds("10 minutes")
    assert str(caught.value) == "'10 minutes' is not a duration such as '30s', '10m' or '1h30m'"
