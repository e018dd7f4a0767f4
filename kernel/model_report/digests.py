"""Which JSON card a report file was drawn from: the sha256 every report file names.

Readers (the fleet report, anyone checking a store) use these to tell a report of this
version from a stale one. Pure byte parsing, bounded by the file's size: no matplotlib.
"""

from __future__ import annotations

from typing import Final

import yaml

#: The YAML key naming the sha256 of the JSON card a Markdown card was rendered from.
DIGEST_KEY: Final = "slaops_card_sha256"
#: Text chunk of every plot: this prefix, then the card's sha256.
DIGEST_PREFIX: Final = "slaops-card-sha256:"


def report_card_digest(kind: str, data: bytes) -> str | None:
    """The card sha256 a report file names (None: not one of ours, or unreadable)."""
    return markdown_card_digest(data) if kind == "report" else png_card_digest(data)


def markdown_card_digest(text: bytes) -> str | None:
    """The card sha256 a Markdown card of ours names in its front matter, or None."""
    try:
        head = text.decode("utf-8").split("\n---\n", 1)[0]
    except UnicodeDecodeError:
        return None
    if not head.startswith("---\n"):
        return None
    try:
        meta = yaml.safe_load(head[4:])
    except yaml.YAMLError:
        return None
    value = meta.get(DIGEST_KEY) if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def png_card_digest(data: bytes) -> str | None:
    """The card sha256 a PNG of ours names in its text chunk; None for anything else.

    Reads at most the chunks before the image data, each bounded by the file's size.
    """
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    at = 8
    for _ in range(64):
        if at + 8 > len(data):
            return None
        length = int.from_bytes(data[at : at + 4], "big")
        kind = data[at + 4 : at + 8]
        body = data[at + 8 : at + 8 + length]
        if kind == b"IDAT" or len(body) != length:
            return None
        if kind == b"tEXt":
            key, _sep, text = body.partition(b"\x00")
            value = text.decode("latin-1")
            if key == b"Description" and value.startswith(DIGEST_PREFIX):
                return value[len(DIGEST_PREFIX) :]
        at += 12 + length
    return None
