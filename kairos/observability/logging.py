"""JSON log lines on stdout: one per request (access log) and one per gateway event.

Gateway events (startup, reload, shutdown, upstream errors) go through the
`logging` module with `JSONFormatter`. The access log does not: a proxied
request builds one dict and `AccessLogWriter.write()` appends its orjson
bytes to a buffer that is flushed to fd 1 once per event-loop iteration (one
`write(2)` for every request finished in that iteration, instead of a
Formatter, a LogRecord and a syscall per request).

Secrets never reach a log line: headers are not logged (only User-Agent),
query values of credential-like keys are masked, and `redact()` masks
passwords in URLs (`redis://:pw@host` -> `redis://:***@host`) in event fields.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any

import orjson

logger = logging.getLogger("kairos")


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    return value


class JSONFormatter(logging.Formatter):
    """Renders a record as one JSON object; extra fields come from `record.fields`."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if fields:
            data.update(_redact_value(fields))
        if record.exc_info and record.exc_info[0] is not None:
            data["error"] = redact(f"{record.exc_info[0].__name__}: {record.exc_info[1]}")
        return orjson.dumps(data, default=str).decode()


_handler: logging.Handler | None = None


# The OpenTelemetry SDK's own warnings (a collector that refuses exports) are gateway events too.
LOGGERS = ("kairos", "uvicorn", "uvicorn.error", "opentelemetry")


def configure_logging(level: str = "info") -> None:
    """Route kairos's, uvicorn's and the tracing SDK's loggers to JSON on stdout (idempotent; also used on reload)."""
    global _handler
    if _handler is None:
        _handler = logging.StreamHandler(sys.stdout)
        _handler.setFormatter(JSONFormatter())
    for name in LOGGERS:
        log = logging.getLogger(name)
        log.handlers[:] = [_handler]
        log.propagate = False
        log.setLevel(level.upper())
    # uvicorn's own access log is replaced by kairos's.
    logging.getLogger("uvicorn.access").disabled = True


def set_level(level: str) -> None:
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level.upper())


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """A gateway event (startup, reload, shutdown, upstream error) as one JSON line."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": {"event": event, **fields}})


# --------------------------------------------------------------------------- secrets

# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)[^@\s/]+@")
# Query parameters whose values are credentials.
_SECRET_QUERY = re.compile(
    r"(?i)(^|&)((?:access_|id_|refresh_)?token|api_?key|apikey|key|password|passwd|secret|jwt|auth|signature|sig|code)=[^&]*"
)


def redact(text: str) -> str:
    """Mask passwords in URLs found in `text`."""
    if "://" in text and "@" in text:
        return _URL_PASSWORD.sub(r"\g<pre>***@", text)
    return text


def redact_query(query: str) -> str:
    """Mask the values of credential-like query parameters (token=, api_key=, password=...)."""
    if "=" not in query:
        return query
    return _SECRET_QUERY.sub(lambda m: f"{m.group(1)}{m.group(2)}=***", query)


# --------------------------------------------------------------------------- access log


class _Clock:
    """RFC 3339 UTC timestamps with milliseconds, formatted at most once per millisecond."""

    __slots__ = ("_second", "_prefix", "_ms", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        self._ms = -1
        self._text = ""

    def now(self) -> str:
        ms = int(time.time() * 1000)
        if ms == self._ms:
            return self._text
        sec = ms // 1000
        if sec != self._second:
            self._second = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        self._ms = ms
        self._text = f"{self._prefix}.{ms % 1000:03d}Z"
        return self._text


clock = _Clock()


class AccessLogWriter:
    """Batches access-log lines and writes them to a file descriptor once per loop iteration."""

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self._lines: list[bytes] = []
        self._scheduled = False

    def write(self, record: dict[str, Any]) -> None:
        self._lines.append(orjson.dumps(record) + b"\n")
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (tests, shutdown): write now
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines.clear()
        # Keep ordering with the event log, which writes through sys.stdout.
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except InterruptedError:
                continue
            except BlockingIOError:
                time.sleep(0.001)
                continue
            except OSError:
                return  # stdout gone: drop the lines rather than kill the request
            view = view[n:]


access_log_writer = AccessLogWriter()
