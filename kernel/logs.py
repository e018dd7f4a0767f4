"""Log output of every `slaops` command: plain text lines, or JSON lines for log pipelines.

`configure_logging(level, "json")` writes one JSON object a line: `ts` (RFC 3339, UTC),
`level`, `logger`, `message`, `exc` when there is a traceback, and the context fields
slaops logs name (`CONTEXT_FIELDS`: tenant, partition, offset, event_id, revision).
A field comes from the record's `extra=` when given there, else from the message's
own `name=value` text (the house style: `tenant=acme partition=3 offset=42`), so every
existing log line carries its fields without changing its call. Only what the message
already says is emitted: secrets are never logged in either format.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Final, Literal

LogFormat = Literal["text", "json"]

#: The context fields a JSON line carries when its record or message names them.
CONTEXT_FIELDS: Final = ("tenant", "partition", "offset", "event_id", "revision")
_INTEGER_FIELDS: Final = frozenset({"partition", "offset"})
_FIELD = re.compile(
    r"(?<![\w.])(" + "|".join(CONTEXT_FIELDS) + r")=('[^']*'|\"[^\"]*\"|[^\s,;:)]+)"
)
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context fields.

    >>> record = logging.LogRecord(
    ...     "consumer.core", logging.INFO, __file__, 1,
    ...     "retrain requested tenant=%s partition=%d offset=%d", ("acme", 3, 42), None,
    ... )
    >>> line = json.loads(JsonFormatter().format(record))
    >>> line["tenant"], line["partition"], line["offset"], line["level"]
    ('acme', 3, 42, 'INFO')
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for match in _FIELD.finditer(message):
            name, value = match.group(1), match.group(2).strip("'\"")
            line.setdefault(name, _typed(name, value))
        for name in CONTEXT_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def _typed(name: str, value: str) -> Any:
    if name in _INTEGER_FIELDS:
        try:
            return int(value)
        except ValueError:
            return value
    return value


def formatter(log_format: LogFormat) -> logging.Formatter:
    """The one formatter of each format."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Log to stderr at `level` in `log_format`; only entry points call this."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # huggingface_hub's client
