"""Malformed telemetry, one kind for each way `schemas.parse_telemetry` refuses a record.

The simulator replaces a share of its valid records with these so that the consumer's
dead-letter path is exercised by the same stream as everything else; `EXPECTED_REJECT`
lets a test or demo check each one was refused for the reason it was made for.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Final

import numpy as np

from schemas.telemetry import DEFAULT_MAX_MESSAGE_BYTES, RejectReason


class MalformedKind(StrEnum):
    NOT_JSON = "not_json"
    WRONG_TYPE = "wrong_type"
    NAN = "nan"
    OUT_OF_RANGE = "out_of_range"
    KEY_MISMATCH = "key_mismatch"
    OVERSIZE = "oversize"
    EMPTY = "empty"


#: The reason `schemas.parse_telemetry` (and so the consumer's dead-letter topic) gives.
EXPECTED_REJECT: Final = {
    MalformedKind.NOT_JSON: RejectReason.NOT_JSON,
    MalformedKind.WRONG_TYPE: RejectReason.SCHEMA,
    MalformedKind.NAN: RejectReason.NON_FINITE,
    MalformedKind.OUT_OF_RANGE: RejectReason.OUT_OF_RANGE,
    MalformedKind.KEY_MISMATCH: RejectReason.KEY_MISMATCH,
    MalformedKind.OVERSIZE: RejectReason.OVERSIZE,
    MalformedKind.EMPTY: RejectReason.EMPTY,
}


#: The value that puts each feature out of its contract's range.
_OUT_OF_RANGE: Final = {
    "latency_p50_ms": -1.0,
    "latency_p99_ms": 4e6,
    "error_rate": 1.5,
    "cpu_util": 1.5,
    "rps": -1.0,
}


def corrupt(
    kind: MalformedKind,
    record: dict[str, object],
    key: bytes,
    other_tenant: str,
    rng: np.random.Generator,
) -> tuple[bytes, bytes]:
    """The bytes of a broken record of `kind`, made from the valid `record`."""
    features = list(_OUT_OF_RANGE)
    feature = features[int(rng.integers(len(features)))]
    broken = dict(record)
    if kind is MalformedKind.NOT_JSON:
        text = json.dumps(record)
        return key, text[: len(text) // 2].encode()
    if kind is MalformedKind.WRONG_TYPE:
        broken[feature] = str(record[feature])
    elif kind is MalformedKind.NAN:
        broken[feature] = float("nan")
    elif kind is MalformedKind.OUT_OF_RANGE:
        broken[feature] = _OUT_OF_RANGE[feature]
    elif kind is MalformedKind.KEY_MISMATCH:
        return other_tenant.encode(), json.dumps(record).encode()
    elif kind is MalformedKind.OVERSIZE:
        # Over the size gate, and invalid even where the gate is set higher.
        broken["service"] = "x" * (DEFAULT_MAX_MESSAGE_BYTES + 1024)
    else:
        return key, b""
    return key, json.dumps(broken).encode()
