"""Keeps the README's settings tables equal to the settings models.

    python -m slaops.settings_doc        # rewrite the tables in README.md

Each table sits between `<!-- settings:NAME -->` and `<!-- /settings:NAME -->`, NAME
being the subcommand; tests/project/test_readme.py fails when a table is stale.
"""

from __future__ import annotations

import json
import re
import sys
from functools import partial
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from kernel.settings import setting_sources


def markdown_table(cls: type[BaseSettings]) -> str:
    lines = ["| setting | env / flag | default | what |", "| --- | --- | --- | --- |"]
    for name, info in cls.model_fields.items():
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if info.is_required():
            shown = "(required)"
        elif isinstance(default, SecretStr):
            shown = "(secret)"
        elif isinstance(default, dict | list) or default is None:
            shown = json.dumps(default)
        else:
            shown = str(default)
        env, flag = setting_sources(name).split(" or ")
        description = (info.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | `{env}` / `{flag}` | `{shown}` | {description} |")
    return "\n".join(lines)


def tables() -> dict[str, str]:
    from slaops.cli import commands

    return {name: markdown_table(cls) for name, (_summary, cls, _run) in commands().items()}


def _fill(table: str, match: re.Match[str]) -> str:
    return match.group(1) + table + "\n" + match.group(2)


def render(readme: str) -> str:
    for name, table in tables().items():
        pattern = re.compile(
            rf"(<!-- settings:{name} -->\n)(?:.*?\n)?(<!-- /settings:{name} -->)", re.S
        )
        readme = pattern.sub(partial(_fill, table), readme)
    return readme


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("README.md")
    path.write_text(render(path.read_text()))


if __name__ == "__main__":
    main()
