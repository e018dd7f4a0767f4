"""Dependencies say what is used: every third-party import of the packages is declared.

Every module is parsed (not imported) like `test_layers`; each import that is neither
the standard library nor a slaops package must come from a distribution named in
`pyproject.toml` (a dependency, or an extra for a lazily imported optional one), and
the installed version must satisfy its declared range.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import packages_distributions, version

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from testkit.layers import LAYERS, top_level_imports
from testkit.paths import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REQUIRED = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = [
    Requirement(r)
    for extra, requirements in PROJECT["optional-dependencies"].items()
    if extra != "dev"
    for r in requirements
]


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the files that import it, for every non-slaops, non-stdlib one."""
    found: dict[str, set[str]] = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            for top, _line in top_level_imports(path):
                if top not in sys.stdlib_module_names and top not in LAYERS:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_dependency() -> None:
    declared = {canonicalize_name(r.name) for r in [*REQUIRED, *EXTRAS]}
    distributions = packages_distributions()
    undeclared = []
    for module, files in sorted(third_party_imports().items()):
        names = {canonicalize_name(d) for d in distributions.get(module, [module])}
        if not names & declared:
            undeclared.append(f"{module} ({', '.join(sorted(files))})")
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_installed_versions_satisfy_the_declared_ranges() -> None:
    for requirement in [*REQUIRED, *EXTRAS]:
        installed = version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), (
            f"{requirement.name} {installed} is outside {requirement.specifier}"
        )
