"""Durations as Kubernetes users write them: `90s`, `10m`, `1h30m`, `0`."""

import math
import re
from typing import Final

from webhook import errors

# ASCII digits only: Python's `\d` (and `float`) would also take digits of every script.
_PART: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_seconds(text: str) -> float:
    """Seconds in `text` (Go `time.ParseDuration` syntax, non-negative, no `us`/`ns`)."""
    if text == "0":
        return 0.0
    position = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        total += float(match[1]) * _UNIT_SECONDS[match[2]]
        position = match.end()
    if position != len(text) or not text or not math.isfinite(total):
        raise errors.InvalidDuration(f"{text!r} is not a duration such as '30s', '10m' or '1h30m'")
    return total
