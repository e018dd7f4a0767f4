"""The layers point one way: schemas <- kernel <- services <- the application.

Every module of every package is parsed (not imported) and each of its imports of
another slaops package is checked against the layer table: an import may go to a
lower layer or stay inside its own package, never up and never sideways. The
application may import of a service only what wires it (`main`, `settings`, `errors`)
and the few modules `APP_USES` names; what a service and the application both need
lives in the kernel. Optional libraries (`LEAF_LIBRARIES`) are reached from the
kernel and the services only through their leaf module, never by importing another.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from testkit.layers import LAYERS, top_level_imports
from testkit.paths import ROOT

#: What only the checkout has (the tests, their support package, the benchmarks).
CHECKOUT_ONLY = ("tests", "testkit", "bench")

#: What the application may import of a service besides its wiring, each for a reason.
APP_USES = {
    "simulator.model": "the demo drives the simulator in-process",
    "retrainer.dataset": "the demo scores published models on post-drift rows never sent",
    "retrainer.metrics": "the same, with the retrainer's own metrics",
    "consumer.follower": "slaops backtest hands each answer to the consumer's own follower",
    "retrainer.publisher": "slaops backtest serves requests with the retrainer's own handler",
    "retrainer.replay": "slaops backtest replays a request's ranges with the same code",
    "retrainer.sre_rules": "slaops backtest judges its warnings beside the SRE rules",
    "retrainer.slices": "slaops backtest slices its figures as the card does, with its code",
}
#: A service's modules the application wires it with.
SERVICE_WIRING = frozenset({"main", "settings", "errors"})
#: Optional or heavy libraries -> the one module of the kernel and the services that
#: imports each at module level (others import it inside a function, when needed).
LEAF_LIBRARIES = {
    "matplotlib": "kernel.model_report.plots",
    "distributed": "retrainer.dask_fits",
    "dask": "retrainer.dask_fits",
}


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


def imported_modules(path: Path) -> set[tuple[str, int]]:
    """(dotted module, line) of every absolute import: `from a import b` names `a.b` when
    `a` is a package of ours and `b` one of its modules."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                is_module = _source(dotted) is not None
                found.add((dotted if is_module else node.module, node.lineno))
    return found


def app_violations() -> list[str]:
    bad = []
    for path in sorted((ROOT / "slaops").rglob("*.py")):
        for module, line in sorted(imported_modules(path)):
            parts = module.split(".")
            if LAYERS.get(parts[0]) != 2:
                continue  # not a service
            if len(parts) > 1 and (parts[1] in SERVICE_WIRING or ".".join(parts[:2]) in APP_USES):
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} (a service's internals)")
    return bad


def _source(module: str) -> Path | None:
    """The file of a module of ours (a package's `__init__.py`), or None."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_level_imports(path: Path) -> set[str]:
    """Dotted modules imported when the module at `path` is (not inside functions, not
    under `if TYPE_CHECKING`), with every package they are in."""
    names: set[str] = set()
    body = list(ast.parse(path.read_text(), filename=str(path)).body)
    while body:
        node = body.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.If | ast.Try):
            body.extend(node.body + node.orelse)
            body.extend(n for handler in getattr(node, "handlers", []) for n in handler.body)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(
                f"{node.module}.{a.name}"
                for a in node.names
                if _source(f"{node.module}.{a.name}") is not None
            )
    return {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}


def leaf_violations() -> list[str]:
    """Modules of the kernel and the services that load a leaf library on import without
    being its leaf module."""
    graph: dict[str, set[str]] = {}
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            graph[name] = _module_level_imports(path)
    bad = []
    for module in sorted(graph):
        if LAYERS[module.split(".")[0]] == 3:
            continue  # the application may draw
        seen, todo = {module}, [module]
        while todo:
            for name in graph.get(todo.pop(), set()):
                if name not in seen:
                    seen.add(name)
                    todo.append(name)
        for library, leaf in LEAF_LIBRARIES.items():
            if library in seen and module != leaf:
                bad.append(f"{module} loads {library} on import (only {leaf} may)")
    return bad


def test_the_application_imports_only_a_services_wiring() -> None:
    assert app_violations() == []


def test_optional_libraries_load_only_with_their_leaf_module() -> None:
    assert leaf_violations() == []


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("from retrainer.report import build_report\n", True),
        ("from consumer import core\n", True),
        ("import retrainer.search\n", True),
        ("from retrainer.main import build_service\n", False),
        ("from consumer import main\n", False),
        ("from simulator.model import TelemetrySimulator\n", False),
    ],
)
def test_the_app_checker_catches_a_services_internals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, caught: bool
) -> None:
    for name in LAYERS:
        (tmp_path / name).mkdir()
    (tmp_path / "consumer" / "core.py").write_text("")
    (tmp_path / "consumer" / "main.py").write_text("")
    (tmp_path / "slaops" / "bad.py").write_text(source)
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    assert len(app_violations()) == int(caught)


def test_the_leaf_checker_catches_a_library_loaded_through_another_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in LAYERS:
        (tmp_path / name).mkdir()
    (tmp_path / "kernel" / "__init__.py").write_text("")
    (tmp_path / "kernel" / "model_report").mkdir()
    (tmp_path / "kernel" / "model_report" / "__init__.py").write_text(
        "def draw():\n    from kernel.model_report import plots\n"
    )
    (tmp_path / "kernel" / "model_report" / "plots.py").write_text("import matplotlib\n")
    (tmp_path / "consumer" / "eager.py").write_text("from kernel.model_report import plots\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    assert leaf_violations() == [
        "consumer.eager loads matplotlib on import (only kernel.model_report.plots may)"
    ]


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
