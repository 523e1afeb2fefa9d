"""Structured logging: one JSON object a line, with the fields passed in `extra=`."""

import json
import logging
import sys
import time
from typing import Any, Final

_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    # kopf's own extras: its whole settings object and a flag for its event poster.
    "settings",
    "k8s_skip",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = (
                    value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
                )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _DenialsLoggedElsewhere(logging.Filter):
    """kopf logs every denial as a handler failure; ours carry the finding's fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed permanently" not in record.getMessage()


LEVELS: Final = ("debug", "info", "warning", "error")


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_DenialsLoggedElsewhere())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kopf narrates every handler call at INFO; keep its warnings and errors.
    logging.getLogger("kopf").setLevel(max(logging.WARNING, root.level))
