"""Triton's logging extension: the LogSettings RPC and ``/v2/logging``
change the server's log level and format at run time.

The settings are Triton's (protocol/extension_logging.md): ``log_info``,
``log_warning``, ``log_error`` (bools), ``log_verbose_level`` (a whole
number; above 0 turns on DEBUG), ``log_format`` (``default`` / ``text``,
``ISO8601``, or ``json``, one object a line) and ``log_file`` (always ""
here: the server logs to stderr; setting it is refused).

The level is the most verbose one switched on, applied to the ``serving``
loggers (the server's own log; library loggers keep the start level). The
format applies to the handlers ``serving.log.configure_logging`` installed.
"""

from __future__ import annotations

import logging
from typing import Mapping

from serving.errors import InvalidInput
from serving.log import formatter_for, server_handlers

SERVER_LOGGER = "serving"
FORMATS = ("default", "text", "ISO8601", "json")
_BOOLS = ("log_info", "log_warning", "log_error")

Value = bool | int | str


class LogSettings:
    def __init__(self, level: str = "INFO", fmt: str = "text") -> None:
        number = logging.getLevelName(level.upper())
        number = number if isinstance(number, int) else logging.INFO
        self._values: dict[str, Value] = {
            "log_file": "",
            "log_info": number <= logging.INFO,
            "log_warning": number <= logging.WARNING,
            "log_error": number <= logging.ERROR,
            "log_verbose_level": 1 if number <= logging.DEBUG else 0,
            "log_format": "json" if fmt == "json" else "default",
        }

    def get(self) -> dict[str, Value]:
        return dict(self._values)

    def update(self, updates: Mapping[str, Value | None]) -> dict[str, Value]:
        """Apply the settings given (None: leave it as it is) and return all
        of them; nothing changes when one of them is refused."""
        values = dict(self._values)
        for key, value in updates.items():
            if value is None:
                continue
            if key in _BOOLS:
                if not isinstance(value, bool):
                    raise InvalidInput(f"{key} must be true or false, got {_shown(value)}")
            elif key == "log_verbose_level":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise InvalidInput(
                        f"log_verbose_level must be a whole number >= 0, got {_shown(value)}"
                    )
            elif key == "log_format":
                if value not in FORMATS:
                    raise InvalidInput(
                        f"log_format must be one of {', '.join(FORMATS)}, got {_shown(value)}"
                    )
            elif key == "log_file":
                if value != "":
                    raise InvalidInput(
                        "log_file: dlserve logs to stderr only; redirect it, or collect the "
                        "container's output (log_format json)"
                    )
            else:
                raise InvalidInput(
                    f"unknown log setting {key[:60]!r}; use one of {', '.join(self._values)}"
                )
            values[key] = value
        self._values = values
        self._apply()
        return self.get()

    def level(self) -> int:
        v = self._values
        if v["log_verbose_level"]:
            return logging.DEBUG
        for key, level in (
            ("log_info", logging.INFO),
            ("log_warning", logging.WARNING),
            ("log_error", logging.ERROR),
        ):
            if v[key]:
                return level
        return logging.CRITICAL

    def _apply(self) -> None:
        logging.getLogger(SERVER_LOGGER).setLevel(self.level())
        fmt = str(self._values["log_format"])
        for handler in server_handlers():
            handler.setFormatter(formatter_for(fmt))


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."
