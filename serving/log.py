"""``configure_logging(settings)``: called once by the entry point."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for containers and log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry)


#: The handlers configure_logging installed (serving.log_settings reformats them).
_HANDLERS: list[logging.Handler] = []


def formatter_for(fmt: str) -> logging.Formatter:
    """text / default, ISO8601 (the same with ISO 8601 times) or json."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "ISO8601":
        return logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z"
        )
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def server_handlers() -> list[logging.Handler]:
    return list(_HANDLERS)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _HANDLERS[:] = [handler]
