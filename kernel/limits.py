"""Size limits shared by the model store and the loader (no heavy imports here)."""

from __future__ import annotations

#: The largest model file (card or weights) that is read or loaded: 64 MiB.
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024
