"""How ``mss serve`` writes its log: plain lines, or one JSON object a line
(``MSS_LOG_FORMAT=json``) for a log collector.

A JSON line carries the time, level, logger and message, and the request id when the
caller gave one (``extra={"request_id": ...}``): the id the audit trail, the SMTP replies
and the web's error pages carry. Messages never hold message content, passwords or keys;
that is the callers' rule, not something this module could repair.
"""

from __future__ import annotations

import json
import logging
import traceback
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = str(request_id)
        if record.exc_info and record.exc_info[0] is not None:
            # The class and the stack, never the exception's text (it may quote input).
            line["error"] = record.exc_info[0].__name__
            line["stack"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)

    def formatException(self, ei) -> str:
        return "".join(traceback.format_tb(ei[2])).rstrip()


def _without_text(error: BaseException) -> str:
    """An exception's stack and class, then those of its causes, never their text."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append("".join(traceback.format_tb(current.__traceback__)) + type(current).__qualname__)
        if current.__cause__ is not None:
            parts.append("caused by:")
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            parts.append("while handling:")
            current = current.__context__
        else:
            current = None
    return "\n".join(parts)


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` lines; an exception by its class and stack (and its causes'), never
    its text, as in JSON: a parser's or a driver's message may quote the input."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        # logging keeps the first handler's rendering of the exception on the record
        # (exc_text): another handler's, with the text, is not reused here, nor ours left.
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatException(self, ei) -> str:
        error = ei[1]
        if error is None:
            return ""
        return "Traceback (without the exceptions' text):\n" + _without_text(error)


# aiosmtpd logs every command at INFO, Alembic each migration step, pyHanko a traceback
# for every signature that does not hold, and httpx every request's whole URL (a webhook's
# may hold its receiver's token, a peer lookup names the recipient); our own lines say what
# matters.
QUIETED = {
    "mail.log": logging.WARNING,
    "alembic": logging.WARNING,
    "pyhanko": logging.ERROR,
    "pyhanko_certvalidator": logging.WARNING,
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
}


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Send the root logger's records to stderr in ``log_format`` (``text`` or ``json``),
    the libraries of ``QUIETED`` only from the level given there."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name, quieted in QUIETED.items():
        logging.getLogger(name).setLevel(quieted)
