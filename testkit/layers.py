"""The layer table and the import parser that the layer, dependency and Dask checks share.

Modules are parsed, never imported, so a check sees every import a file makes,
lazy ones inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

#: package -> layer; a package may import its own layer only from itself.
LAYERS = {
    "schemas": 0,
    "kernel": 1,
    "consumer": 2,
    "retrainer": 2,
    "simulator": 2,
    "slaops": 3,
}


def top_level_imports(path: Path) -> set[tuple[str, int]]:
    """(top-level module, line) of every absolute import in the file at `path`."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update((name.split(".")[0], node.lineno) for name in names)
    return found
