"""Writes `schemas/*.schema.json` from the models: `python -m schemas.export`."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas import EXPORTED

SCHEMA_DIR = Path(__file__).parent


def render(model: type[BaseModel]) -> str:
    return json.dumps(model.model_json_schema(mode="validation"), indent=2, sort_keys=True) + "\n"


def main() -> None:
    for stem, model in EXPORTED.items():
        (SCHEMA_DIR / f"{stem}.schema.json").write_text(render(model))


if __name__ == "__main__":
    main()
