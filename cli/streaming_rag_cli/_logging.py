"""Logging for the CLI's long-running commands: plain lines or one JSON object per line
(`--log-format json`, or `STREAMING_RAG_LOG_FORMAT=json`), for log pipelines that parse them.

A JSON line holds ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``msg`` and every structured
field the record carries (the worker's job lines add ``job_id``, ``status``, ``worker``,
``queue_ms``, ``duration_ms``, ``events``); an exception adds ``exc``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

__all__ = ["FORMATS", "JsonFormatter", "setup_logging"]

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Attributes every LogRecord has; anything else on a record is a structured field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def setup_logging(verbose: bool, level: int = logging.WARNING, fmt: str = "text") -> None:
    """Log to stderr at `level` (DEBUG with `verbose`), as text or JSON lines (`fmt`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else level, handlers=[handler])
