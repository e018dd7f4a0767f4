"""Where the checkout is: the one root every test and benchmark reads files under."""

from __future__ import annotations

from pathlib import Path

#: The repository root (this package sits at its top level).
ROOT = Path(__file__).resolve().parents[1]
