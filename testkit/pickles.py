"""Pickles that run code when loaded: what an attacker puts in a `.pt` file.

Each leaves a mark (a touched file) if an unrestricted unpickler loads it, so a test
can show the payload is live and then that the loader refuses it.
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import Any

import torch


class TouchOnUnpickle:
    """Unpickling calls `Path.touch(marker)`."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.marker,))


class SystemOnUnpickle:
    """Unpickling runs a shell command (`os.system`) that touches `marker`."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch '{self.marker}'",))


def torch_saved(obj: object) -> bytes:
    """What `torch.save` writes for a state dict that carries `obj` beside a weight."""
    buffer = io.BytesIO()
    torch.save({"head.weight": torch.zeros(1, 8), "evil": obj}, buffer)
    return buffer.getvalue()
