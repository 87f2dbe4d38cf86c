"""Logging, configured once for the process: readable text or JSON lines.

Both formats keep one record on one line whatever a client sends: text
lines escape control characters in the message (an email holding "\\n"
cannot forge a line) and indent a traceback's lines, so only a record
starts at the beginning of a line; JSON escapes them by itself. Every
record also passes ``Redact``, which blanks credentials a client put in a
query string (``?access_token=…``) before any format sees them, and
``Context``, which adds the request id and the function run id of the code
that logs (``REQUEST_ID``, ``RUN_ID``: context variables, so the tasks a
request starts keep its id): as keys in JSON, in brackets in text.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: Query parameters whose values never reach a log.
SECRET_PARAMS = ("access_token", "refresh_token", "token", "api_key", "apikey", "password")
_SECRET_QUERY = re.compile(
    r"([?&;](?:" + "|".join(SECRET_PARAMS) + r")=)[^&;#\s\"]*", re.IGNORECASE
)
REDACTED = "[redacted]"

#: The id of the request being handled (set by the web layer's outermost middleware).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "edgeloader_request_id", default=None
)
#: The id of the function run being executed (set by the function service).
RUN_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "edgeloader_run_id", default=None
)
#: The record attributes ``Context`` fills, in the order text lines show them.
CONTEXT_FIELDS = ("request_id", "run_id")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``)."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if char in _NAMED:
            return _NAMED[char]
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROL.sub(escape, text)


def redact(text: str) -> str:
    """``text`` with the values of secret query parameters blanked."""
    return _SECRET_QUERY.sub(lambda m: m.group(1) + REDACTED, text)


class Redact(logging.Filter):
    """Blanks secret query parameters in the message and in string extras
    (aiohttp's access log passes the request line as ``first_request_line``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class Context(logging.Filter):
    """Adds ``request_id`` and ``run_id`` to a record when they are set."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (("request_id", REQUEST_ID), ("run_id", RUN_ID)):
            value = var.get()
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


class TextFormatter(logging.Formatter):
    """The text format: one line a record, control characters escaped; the
    request and run ids, when set, lead the message in brackets."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        ids = " ".join(
            f"{name}={escape_controls(str(value))}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
        )
        if ids:
            record.message = f"[{ids}] {record.message}"
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + escape_controls(line) for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object a line; ``extra=`` fields are kept as keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def handler(fmt: str = "text", stream: Any = None) -> logging.Handler:
    """A handler writing ``fmt`` lines (text or json) to ``stream`` (stderr),
    with the redaction and the request and run ids."""
    out = logging.StreamHandler(sys.stderr if stream is None else stream)
    out.addFilter(Context())
    out.addFilter(Redact())
    out.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    return out


def configure(fmt: str = "text", level: str = "INFO") -> None:
    root = logging.getLogger()
    root.handlers[:] = [handler(fmt)]
    root.setLevel(level.upper())
    # aiohttp's access log is useful; botocore's debug chatter is not.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("aiobotocore").setLevel(logging.WARNING)
