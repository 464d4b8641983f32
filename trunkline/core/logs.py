"""Process logging, set up the same way by every service's entry (`setup`).

`TRUNKLINE_LOG_FORMAT=text` (the default) writes the familiar one-line text;
`TRUNKLINE_LOG_FORMAT=json` writes one JSON object per line, for a log shipper:

    {"ts": "2026-01-05T10:00:00.123Z", "level": "info", "service": "media",
     "logger": "trunkline.media.sip", "pid": 4242, "msg": "call q-1 ended: completed by
     caller", "call_id": "q-1"}

`call_id` is there when the line concerns one call: the log call names it
(`log.info(..., extra=logs.call(call_id))`) or the code runs inside
`call_context(call_id)`. Since every process uses our call id (the queue id), one call
can be followed across the edge, the worker and the media node with one filter. An
exception's traceback goes in `exc`; uncaught exceptions and Python warnings are logged
the same way, so every line of a JSON log parses.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TextIO

import orjson

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"

#: the call the running code works for, when it works for one
CALL_ID: ContextVar[str | None] = ContextVar("trunkline_call_id", default=None)


def call(call_id: str | None) -> dict[str, Any]:
    """`extra=` for a log line about one call."""
    return {"call_id": call_id}


@contextmanager
def call_context(call_id: str | None) -> Iterator[None]:
    """Every line logged inside carries `call_id` (unless it names its own)."""
    token = CALL_ID.set(call_id)
    try:
        yield
    finally:
        CALL_ID.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        call_id = getattr(record, "call_id", None) or CALL_ID.get()
        if call_id:
            doc["call_id"] = call_id
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


def formatter(fmt: str, service: str) -> logging.Formatter:
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    return JsonFormatter(service) if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def setup(level: str, fmt: str, service: str, stream: TextIO | None = None) -> logging.Handler:
    """The process's one log handler (on `stream`, default stderr) at `level`, in `fmt`:
    what was there is replaced. `debug` turns on trunkline's own debug lines only."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(fmt, service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # debug is for trunkline's own lines: the libraries' (aiokafka logs every fetch)
    # stay at info
    wanted = logging.getLevelName(level.upper())
    root.setLevel(max(wanted, logging.INFO))
    logging.getLogger("trunkline").setLevel(wanted)
    if fmt == "json":
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_thread_uncaught
    return handler


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("trunkline").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("trunkline").critical(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )
