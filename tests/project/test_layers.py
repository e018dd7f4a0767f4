"""The layers point one way: schemas <- kernel <- services <- the application.

Every module of every package is parsed (not imported) and each of its imports of
another slaops package is checked against the layer table: an import may go to a
lower layer or stay inside its own package, never up and never sideways.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from testkit.layers import LAYERS, top_level_imports
from testkit.paths import ROOT

#: What only the checkout has (the tests, their support package, the benchmarks).
CHECKOUT_ONLY = ("tests", "testkit", "bench")


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every slaops import in the file at `path`."""
    return {(top, line) for top, line in top_level_imports(path) if top in LAYERS}


def violations() -> list[str]:
    bad = []
    for package, layer in LAYERS.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for target, line in sorted(imported_packages(path)):
                if target == package:
                    continue
                if LAYERS[target] >= layer:
                    kind = "up" if LAYERS[target] > layer else "sideways"
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({kind})")
    return bad


def test_every_package_is_in_the_table() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - set(CHECKOUT_ONLY)
    assert packages == set(LAYERS)


def test_imports_point_down_only() -> None:
    assert violations() == []


def test_no_package_imports_what_only_the_checkout_has() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {top}"
        for package in LAYERS
        for path in sorted((ROOT / package).rglob("*.py"))
        for top, line in sorted(top_level_imports(path))
        if top in CHECKOUT_ONLY
    ]
    assert bad == []


def test_the_wheel_ships_the_packages_and_nothing_only_the_checkout_has() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = {pattern.removesuffix("*") for pattern in setuptools["packages"]["find"]["include"]}
    assert shipped == set(LAYERS)


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("kernel", "from consumer.core import IngestCore\n", "up"),
        ("consumer", "import retrainer.search\n", "sideways"),
        ("schemas", "from kernel import errors\n", "up"),
    ],
)
def test_the_checker_catches_a_wrong_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str, source: str, expected: str
) -> None:
    (tmp_path / package).mkdir()
    for name in LAYERS:
        (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / package / "bad.py").write_text(source)
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    found = violations()
    assert len(found) == 1 and found[0].endswith(f"({expected})")
