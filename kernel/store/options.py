"""How to reach a model store's backend: one options object for every scheme.

``open_store(uri, options)`` hands the same :class:`StoreOptions` to whichever backend
the URI's scheme names; a backend reads what applies to it and ignores the rest (the
file store needs none of it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import SecretStr

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = ["StoreOptions"]


@dataclass(frozen=True)
class StoreOptions:
    """Client, credentials and retry policy of a store (``hf://`` reads them all).

    ``hf_api`` injects a ready client (tests, or a caller's own session); otherwise
    one is built from ``token`` and ``endpoint`` (``None`` leaves huggingface_hub's
    own defaults, ``HF_TOKEN`` and ``HF_ENDPOINT``), never both. ``private`` is how a
    missing repo is created. A transient failure is tried ``max_attempts`` times with
    jittered exponential pauses from ``backoff_s`` up to ``max_backoff_s``, through
    ``sleep``; a publish that loses the race for the repo head commits again up to
    ``max_conflicts`` times. ``http_timeout_s`` bounds every huggingface_hub request,
    process-wide (``None``: leave the library's client alone).
    """

    hf_api: HfApi | None = None
    token: SecretStr | None = None
    endpoint: str | None = None
    private: bool = True
    max_attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_conflicts: int = 8
    http_timeout_s: float | None = 60.0
    sleep: Callable[[float], None] = time.sleep
