"""Log output of every `slaops` command: plain text lines, or JSON lines for log pipelines.

`configure_logging(level, "json")` writes one JSON object a line: `ts` (RFC 3339, UTC),
`level`, `logger`, `message`, `exc` when there is a traceback, and the context fields
slaops logs name (`CONTEXT_FIELDS`: tenant, partition, offset, event_id, revision).
A field comes from the record's `extra=` only (``log.info("...", extra={"tenant": t})``),
never from the message text: a message quotes what producers sent, and a slug or a
detail that reads ``tenant=globex`` must not set the field. Only what the call gives is
emitted: secrets are never logged in either format.

Every record is one line in either format. Log text quotes what producers and clients
sent, so the text format writes every hidden character of a message as an escape
(`visible`): control characters (a newline, a carriage return, a terminal escape),
format characters (zero-width and bidi marks, such as U+200B, U+200F, U+061C and
U+202E), surrogates and the line and paragraph separators. A traceback keeps its line
breaks but every line of it is indented, so no line of it can pass for a record. The
JSON format writes those characters as JSON escapes: the value read back is unchanged.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import unicodedata
from datetime import UTC, datetime
from typing import Any, Final, Literal

LogFormat = Literal["text", "json"]

#: The context fields a JSON line carries when its record's `extra=` gives them.
CONTEXT_FIELDS: Final = ("tenant", "partition", "offset", "event_id", "revision")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The indent of every line of a traceback in the text format.
TRACEBACK_INDENT: Final = "    "

#: Characters that may be hidden: everything outside printable ASCII is checked.
_SUSPECT = re.compile(r"[^\x20-\x7e]")
#: Unicode categories written as escapes: control, format, surrogate, private use,
#: unassigned; line and paragraph separators.
_HIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


@functools.lru_cache(maxsize=4096)
def _shown(char: str) -> str:
    """`char` itself, or its Python escape when it is hidden (``\\n``, ``\\u200b``)."""
    if unicodedata.category(char) not in _HIDDEN_CATEGORIES:
        return char
    return char.encode("unicode_escape", "backslashreplace").decode("ascii")


@functools.lru_cache(maxsize=4096)
def _json_shown(char: str) -> str:
    """`char` itself, or its JSON escape when it is hidden (UTF-16 pairs above U+FFFF)."""
    if unicodedata.category(char) not in _HIDDEN_CATEGORIES:
        return char
    units = char.encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))


def visible(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every hidden character written as its escape; printable text is kept.

    Hidden: Unicode categories C (controls such as a newline or ESC, format characters
    such as the zero-width and bidi marks U+200B, U+200F, U+061C, U+202E, surrogates,
    private use, unassigned) and the line and paragraph separators U+2028, U+2029.
    `keep_newlines` keeps ``\\n`` itself (for tracebacks, indented by the caller).

    >>> visible("a\\nb\\x1b[2J")
    'a\\\\nb\\\\x1b[2J'
    >>> visible("acme\\u202egnp.exe") == "acme\\\\u202egnp.exe"
    True
    >>> visible("Zürich 東京")
    'Zürich 東京'
    """

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        return char if keep_newlines and char == "\n" else _shown(char)

    return _SUSPECT.sub(escape, text)


def json_visible(line: str) -> str:
    """A JSON text with every hidden character JSON-escaped (the same value read back).

    >>> json_visible('{"t": "a\\u200fb"}')
    '{"t": "a\\\\u200fb"}'
    """
    return _SUSPECT.sub(lambda m: _json_shown(m.group()), line)


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, one line a record: hidden characters escaped, tracebacks indented.

    >>> record = logging.LogRecord(
    ...     "consumer", logging.INFO, __file__, 1, "unknown tenant %s", ("a\\nFORGED",), None
    ... )
    >>> TextFormatter("%(message)s").format(record)
    'unknown tenant a\\\\nFORGED'
    """

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        record.message = visible(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        blocks = []
        if record.exc_info:
            blocks.append(self.formatException(record.exc_info))
        if record.stack_info:
            blocks.append(self.formatStack(record.stack_info))
        for block in blocks:
            text = visible(block.rstrip("\n"), keep_newlines=True)
            line += "".join(f"\n{TRACEBACK_INDENT}{part}" for part in text.split("\n"))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context fields.

    The context fields come from the record's `extra=` only; the message text never
    sets one, whatever it says.

    >>> record = logging.LogRecord(
    ...     "consumer.core", logging.INFO, __file__, 1,
    ...     "retrain requested tenant=%s partition=%d offset=%d", ("acme", 3, 42), None,
    ... )
    >>> record.__dict__.update(tenant="acme", partition=3, offset=42)
    >>> line = json.loads(JsonFormatter().format(record))
    >>> line["tenant"], line["partition"], line["offset"], line["level"]
    ('acme', 3, 42, 'INFO')
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json_visible(json.dumps(line, default=str, ensure_ascii=False))


def formatter(log_format: LogFormat) -> logging.Formatter:
    """The one formatter of each format."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Log to stderr at `level` in `log_format`; only entry points call this."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # huggingface_hub's client
