"""What the README tells a new user, checked against the repository.

The set-up lines (the demo's install, the test command `.ci/run` runs, the
`Dockerfile`) agree on the torch pin and install it first; the CPU-index form is the
`Dockerfile`'s; the metrics table names every family the services export, and only
those; the file store's index is where the README says.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from kernel.store import FileStore
from testkit.metric_families import exported_families
from testkit.paths import ROOT

README = (ROOT / "README.md").read_text()
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_INSTALL = re.compile(
    r"pip install (?:-q )?torch==(?P<pin>[\w.+]+)(?P<index> --index-url \S+)?"
)
PROJECT_INSTALL = re.compile(r"pip install (?:-q )?(?:-e )?'\.\[[\w,]+\]'")


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)^## ", README, re.S | re.M)
    assert match is not None, title
    return match.group(1)


def _sh_lines(text: str) -> list[str]:
    return [
        line for block in re.findall(r"```sh\n(.*?)\n```", text, re.S) for line in block.split("\n")
    ]


def _test_command() -> str:
    block = re.search(
        r"<!-- test-command -->\n```sh\n(.+?)\n```\n<!-- /test-command -->", README, re.S
    )
    assert block is not None
    return block.group(1)


def _install_lines() -> list[str]:
    """Every set-up line that installs the project, the test command's included."""
    lines = [line for line in _sh_lines(_section("Set-up")) if PROJECT_INSTALL.search(line)]
    assert _test_command() in lines
    return lines


def test_every_set_up_line_installs_the_one_torch_pin_first() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    (docker_pin,) = re.findall(r"\btorch==([\w.+]+)", dockerfile)
    lines = _install_lines()
    assert len(lines) >= 3  # the demo's two forms and the test command
    for line in lines:
        torch = list(TORCH_INSTALL.finditer(line))
        assert len(torch) == 1, f"one torch install per line: {line}"
        assert torch[0]["pin"] == docker_pin, line
        project = PROJECT_INSTALL.search(line)
        assert project is not None and torch[0].end() < project.start(), f"torch first: {line}"
        assert "--extra-index-url" not in line
    # The pin meets the project's own requirement, so installing the project keeps it.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (requirement,) = [
        Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("torch")
    ]
    assert Version(docker_pin) in requirement.specifier


def test_the_readme_shows_the_dockerfiles_cpu_index_beside_the_plain_pin() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"--index-url {CPU_INDEX} torch==" in dockerfile
    indexed = [line for line in _install_lines() if CPU_INDEX in line]
    plain = [line for line in _install_lines() if "--index-url" not in line]
    assert len(indexed) == 1 and indexed[0].endswith("slaops demo"), indexed
    match = TORCH_INSTALL.search(indexed[0])
    assert match is not None and match["index"] == f" --index-url {CPU_INDEX}"
    # The plain form of the same demo line, and the test command (the CI machine cannot
    # reach PyTorch's index; its mirror holds the CPU build).
    assert indexed[0].replace(f" --index-url {CPU_INDEX}", "") in plain
    assert _test_command() in plain
    setup = _section("Set-up")
    assert "without a GPU" in setup and "out of reach" in setup


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci and "sed -n" in ci
    assert "torch" not in ci, ".ci/run installs nothing of its own: the README's line does"


def _table_names() -> set[str]:
    """Series names in the Observability section's two metrics tables."""
    section = _section("Observability")
    names: set[str] = set()
    for service in ("consumer", "retrainer"):
        header = rf"^\| {service} \| what \|\n\| --- \| --- \|\n"
        table = re.search(header + r"((?:\|.*\n)+)", section, re.M)
        assert table is not None, service
        for row in table.group(1).splitlines():
            cell = row.split(" | ")[0]
            for name in re.findall(r"`([\w]+)(?:\{[\w,]+\})?`", cell):
                names.add(name if name.startswith("slaops_") else f"slaops_{service}{name}")
    return names


def test_the_metrics_table_names_every_exported_family_and_only_those() -> None:
    expected = {
        name + ("_total" if kind == "counter" else "") for name, kind in exported_families().items()
    }
    listed = _table_names()
    assert sorted(expected - listed) == [], "families missing from the README's table"
    assert sorted(listed - expected) == [], "the README's table names series no service exports"


def test_the_file_stores_index_is_where_the_readme_says(tmp_path: Path) -> None:
    tenant = "3a" * 32
    store = FileStore(tmp_path)
    published = store.publish(
        tenant,
        {"safetensors": b"w" * 64, "pt": b"p" * 64, "card": b"{}"},
        message="event=readme",
    )
    stated = "DIR/.revisions/{tenant_hash}/{revision}/index.json"
    assert f"`{stated}`" in README
    path = tmp_path / stated.removeprefix("DIR/").format(
        tenant_hash=tenant, revision=published.revision
    )
    assert path.is_file(), sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert "`sla_models/{tenant_hash}_sla_index.json`" in README  # the Hub's, kept apart
    assert not (tmp_path / "sla_models" / f"{tenant}_sla_index.json").exists()
