"""TRUNKLINE_LOG_FORMAT: one JSON object per line, with the call id where one applies."""

import io
import json
import logging
import sys
import threading

import pytest

from trunkline.core import logs


@pytest.fixture
def captured():
    stream = io.StringIO()
    root = logging.getLogger()
    ours = logging.getLogger("trunkline")
    saved = (list(root.handlers), root.level, sys.excepthook, threading.excepthook, ours.level)
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    ours.setLevel(saved[4])
    sys.excepthook, threading.excepthook = saved[2], saved[3]
    logging.captureWarnings(False)


def lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_call_id_named_or_in_context(captured):
    logs.setup("debug", "json", "media", captured)
    log = logging.getLogger("trunkline.media.sip")
    log.info("call %s ended: %s", "q-1", "completed", extra=logs.call("q-1"))
    with logs.call_context("q-2"):
        log.debug("inside")
        log.info("named wins", extra=logs.call("q-3"))
    log.warning("no call here")
    first, inside, named, none = lines(captured)
    assert first["msg"] == "call q-1 ended: completed" and first["call_id"] == "q-1"
    assert (first["level"], first["service"], first["logger"]) == (
        "info",
        "media",
        "trunkline.media.sip",
    )
    assert first["ts"].endswith("Z") and len(first["ts"]) == 24 and first["pid"] > 0
    assert inside["call_id"] == "q-2" and inside["level"] == "debug"
    assert named["call_id"] == "q-3"
    assert "call_id" not in none


def test_exceptions_and_odd_messages_stay_one_json_line(captured):
    logs.setup("info", "json", "worker", captured)
    log = logging.getLogger("aiokafka")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("failed with %r", {"x": b"\xff"})
    log.info("multi\nline %s", object())
    raw = captured.getvalue().splitlines()
    assert len(raw) == 2
    failed, multi = lines(captured)
    assert "ValueError: bad" in failed["exc"] and failed["level"] == "error"
    assert multi["msg"].startswith("multi\nline <object")


def test_text_stays_the_familiar_line_and_levels_filter(captured):
    logs.setup("warning", "text", "sink", captured)
    logging.getLogger("trunkline.sink").info("hidden")
    logging.getLogger("trunkline.sink").warning("shown %d", 1, extra=logs.call("q-9"))
    (line,) = captured.getvalue().splitlines()
    assert line.endswith("[WARNING] trunkline.sink: shown 1") and line.startswith("[")


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="log format 'xml'"):
        logs.formatter("xml", "x")


def test_debug_is_for_trunkline_lines_and_libraries_stay_at_info(captured):
    logs.setup("debug", "json", "worker", captured)
    logging.getLogger("aiokafka.conn").debug("every fetch")
    logging.getLogger("aiokafka.conn").info("connected")
    logging.getLogger("trunkline.agents").debug("call q-1: admission (none) -> ADMITTED")
    assert [line["msg"] for line in lines(captured)] == [
        "connected",
        "call q-1: admission (none) -> ADMITTED",
    ]
