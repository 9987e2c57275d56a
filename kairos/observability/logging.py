"""JSON log lines on stdout: one per request (access log) and one per gateway event."""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from typing import Any

import orjson

logger = logging.getLogger("kairos")


class JSONFormatter(logging.Formatter):
    """Renders a record as one JSON object; extra fields come from `record.fields`."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            data.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            data["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return orjson.dumps(data, default=str).decode()


def configure_logging(level: str = "info") -> None:
    """Route kairos's and uvicorn's loggers to JSON on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JSONFormatter())
    for name in ("kairos", "uvicorn", "uvicorn.error"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.propagate = False
        log.setLevel(level.upper())
    # uvicorn's own access log is replaced by kairos's.
    logging.getLogger("uvicorn.access").disabled = True


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """A gateway event (startup, reload, shutdown, upstream error) as one JSON line."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": {"event": event, **fields}})
