"""Hostile text in logs (`kernel.logs`) and in `slaops watch`: one record, one line.

A field a producer sent (a detail, a key, an exception message) may hold a newline, a
carriage return, a terminal escape, or zero-width and bidi marks. None of them may
forge a log line, hide text, or set a JSON field; and librdkafka's own output and the
HTTP servers' errors go through the logger, so JSON mode stays JSON.
"""

from __future__ import annotations

import io
import json
import logging
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel.kafka import LIBRDKAFKA_LOG, make_reader
from kernel.logs import JsonFormatter, formatter, json_visible, visible
from kernel.store import open_store
from slaops.watch import printable
from testkit.ports import free_port
from testkit.request_handlers import handler
from testkit.retrain_data import request_for

FORGED = "\n2030-01-01 00:00:00,000 INFO consumer.triggers: retrain requested tenant=globex"
HIDDEN = [
    "\n",
    "\r",
    "\x00",
    "\x1b[2J",
    "\x7f",
    "\x85",  # C1 next line
    "\u2028",  # line separator
    "\u2029",
    "\u200b",  # zero-width space
    "\u200f",  # right-to-left mark
    "\u061c",  # Arabic letter mark
    "\u202e",  # right-to-left override
    "\u2066",  # left-to-right isolate
    "\ufeff",  # zero-width no-break space
    "\u2060",  # word joiner
    "\U000e0041",  # tag character
]


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO, io.StringIO]]:
    """A logger writing to a text and a JSON stream, with the formatters slaops uses."""
    logger = logging.getLogger("tests.hostile_logs")
    text, jsonl = io.StringIO(), io.StringIO()
    handlers = []
    for stream, kind in ((text, "text"), (jsonl, "json")):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter(kind))  # type: ignore[arg-type]
        logger.addHandler(handler)
        handlers.append(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, text, jsonl
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.propagate = True


def test_a_newline_in_a_field_cannot_forge_a_text_log_line(logged: tuple) -> None:
    logger, text, _ = logged
    logger.warning("unknown tenant=%s", "acme" + FORGED)
    out = text.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n"), out
    assert "acme\\n2030-01-01" in out
    assert not any(line.startswith("2030-01-01") for line in out.splitlines())


@pytest.mark.parametrize("char", HIDDEN, ids=[f"U+{ord(c[0]):04X}" for c in HIDDEN])
def test_every_hidden_character_is_written_as_an_escape_in_both_formats(
    logged: tuple, char: str
) -> None:
    logger, text, jsonl = logged
    message = f"detail a{char}b"
    logger.info("%s", message)
    line = text.getvalue()[:-1]  # less the record's own newline
    assert char[0] not in line and "\n" not in line, repr(line)
    assert line.endswith(f"detail a{char.encode('unicode_escape').decode()}b")
    raw = jsonl.getvalue()[:-1]
    assert not [c for c in raw if unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"}], raw
    assert json.loads(raw)["message"] == message  # escaped, not lost


def test_printable_text_stays_as_it_is(logged: tuple) -> None:
    logger, text, jsonl = logged
    logger.info("tenant %s in %s", "zürich-東京", "Ünïcode ✓")
    assert text.getvalue().endswith("tenant zürich-東京 in Ünïcode ✓\n")
    assert "zürich-東京" in jsonl.getvalue()


def test_a_traceback_keeps_its_lines_but_none_can_pass_for_a_record(logged: tuple) -> None:
    logger, text, jsonl = logged
    try:
        raise ValueError("bad detail" + FORGED + "\x1b[2J")
    except ValueError:
        logger.exception("request failed")
    lines = text.getvalue().splitlines()
    assert lines[0].endswith("request failed") and len(lines) > 3
    assert all(line.startswith("    ") for line in lines[1:]), lines
    assert any("Traceback (most recent call last):" in line for line in lines)
    assert "\x1b" not in text.getvalue() and "\\x1b[2J" in text.getvalue()
    record = json.loads(jsonl.getvalue())
    assert "ValueError: bad detail" in record["exc"] and "\x1b" in record["exc"]


def test_the_message_text_sets_no_json_field(logged: tuple) -> None:
    """A key like ` tenant=globex event_id=...` in a message is text, not a field."""
    logger, _, jsonl = logged
    key = " tenant=globex event_id=" + "f" * 32 + " partition=0 offset=1 revision=r"
    logger.warning("unknown key %s", key)
    line = json.loads(jsonl.getvalue())
    assert line["message"] == "unknown key " + key
    assert not {"tenant", "event_id", "partition", "offset", "revision"} & set(line)


def test_json_fields_come_from_extra_and_keep_their_types(logged: tuple) -> None:
    logger, _, jsonl = logged
    logger.info(
        "retrain requested tenant=%s (key said tenant=globex)",
        "acme",
        extra={"tenant": "acme", "partition": 3, "offset": 42, "event_id": "e" * 32},
    )
    line = json.loads(jsonl.getvalue())
    assert (line["tenant"], line["partition"], line["offset"]) == ("acme", 3, 42)
    assert line["event_id"] == "e" * 32 and "revision" not in line


def test_json_visible_keeps_the_value_and_escapes_astral_characters() -> None:
    value = {"detail": "a\u202eb\U000e0041c\x7f"}
    line = json_visible(json.dumps(value, ensure_ascii=False))
    assert line.isascii() and json.loads(line) == value
    assert "\\udb40\\udc41" in line


def test_watch_escapes_zero_width_and_bidi_characters() -> None:
    line = printable("FAILED   acme  \u200b\u200f\u061c\u202e\u2066\ufeff detail")
    assert line.isascii(), repr(line)
    assert "\\u200b\\u200f\\u061c\\u202e\\u2066\\ufeff" in line
    assert printable("a\nb\x1b[2J") == "a\\nb\\x1b[2J"
    assert visible("zürich") == "zürich"


def test_librdkafka_logs_go_through_the_logger_not_stderr(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A client with no broker to reach: librdkafka logs its connection failures."""
    jsonl = io.StringIO()
    handler = logging.StreamHandler(jsonl)
    handler.setFormatter(JsonFormatter())
    LIBRDKAFKA_LOG.addHandler(handler)
    reader = make_reader({"bootstrap.servers": f"127.0.0.1:{free_port()}"}, "hostile-logs")
    try:
        with caplog.at_level(logging.INFO, logger=LIBRDKAFKA_LOG.name):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not caplog.records:
                reader.consume(10, 0.2)
    finally:
        reader.close()
        LIBRDKAFKA_LOG.removeHandler(handler)
    assert caplog.records, "librdkafka logged nothing through the logger"
    assert any("Connect to" in r.getMessage() for r in caplog.records)
    lines = jsonl.getvalue().splitlines()
    assert lines and all(json.loads(line)["logger"] == LIBRDKAFKA_LOG.name for line in lines)
    err = capfd.readouterr().err
    assert "rdkafka#consumer" not in err and "|FAIL|" not in err, err


def test_the_retrainer_s_json_lines_name_the_request_they_log(tmp_path: Path) -> None:
    """The call sites give their fields as `extra=`, now that the text sets none."""
    uri = f"file://{tmp_path / 'models'}"
    serve = handler((uri, open_store(uri)))
    request = request_for("gone")  # its offsets are gone: the request fails
    jsonl = io.StringIO()
    sink = logging.StreamHandler(jsonl)
    sink.setFormatter(JsonFormatter())
    publisher = logging.getLogger("retrainer.publisher")
    publisher.addHandler(sink)
    try:
        outcome = serve.handle(request)
    finally:
        publisher.removeHandler(sink)
    assert outcome.kind == "failed"
    lines = [json.loads(line) for line in jsonl.getvalue().splitlines()]
    failed = [line for line in lines if "failed" in line["message"]]
    assert failed and failed[0]["tenant"] == "gone"
    assert failed[0]["event_id"] == request.event_id
