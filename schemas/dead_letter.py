"""The dead-letter envelope of `sla.telemetry.dlq`.

The value of a dead letter is the original bytes, untouched (it may not even be UTF-8),
and the key is the original key; the envelope travels in headers so that a replay tool
can re-send the value as it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from schemas.telemetry import RejectReason
from schemas.topics import TOPIC_NAME_PATTERN

HEADER_PREFIX: Final = "slaops.dlq."


class DeadLetter(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    reason: RejectReason
    detail: str = Field(max_length=500)
    source_topic: Annotated[str, StringConstraints(pattern=TOPIC_NAME_PATTERN)]
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)
    failed_at: AwareDatetime

    def to_headers(self) -> list[tuple[str, bytes]]:
        fields = self.model_dump(mode="json")
        return [(HEADER_PREFIX + name, str(value).encode()) for name, value in fields.items()]

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes | None]] | None) -> DeadLetter:
        found = {
            name.removeprefix(HEADER_PREFIX): (raw or b"").decode()
            for name, raw in headers or ()
            if name.startswith(HEADER_PREFIX)
        }
        return cls.model_validate(found, strict=False)
