"""Every docstring example in the packages runs, and importing a module starts nothing.

The modules are found by walking the packages (a new module is covered without an
edit here). Importing one must open no socket, start no process, no thread and no
Kafka client: the import check runs in a fresh interpreter where each of those raises,
so modules an earlier test imported cannot hide a side effect.
"""

from __future__ import annotations

import doctest
import importlib
import json
import pkgutil
import subprocess
import sys

import pytest

from testkit.paths import ROOT

PACKAGES = ("schemas", "kernel", "consumer", "retrainer", "simulator", "slaops")


def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        path = [str(ROOT / package)]
        for info in pkgutil.walk_packages(path, prefix=f"{package}."):
            if not info.name.endswith(".__main__"):
                names.append(info.name)
    return sorted(names)


MODULES = module_names()

#: Run in a fresh interpreter: every way out of the process raises, then each module
#: is imported; prints the names that imported cleanly as JSON.
GUARDED_IMPORT = """
import importlib, json, socket, subprocess, sys, threading

def refuse(*args, **kwargs):
    raise RuntimeError("side effect at import time")

socket.socket.connect = refuse
socket.socket.bind = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
subprocess.Popen.__init__ = refuse
threading.Thread.start = refuse
import confluent_kafka
import confluent_kafka.admin
for name in ("Producer", "Consumer", "AdminClient"):
    for module in (confluent_kafka, confluent_kafka.admin):
        if hasattr(module, name):
            setattr(module, name, refuse)
done = []
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
    done.append(name)
print(json.dumps(done))
"""


def test_every_package_module_is_found() -> None:
    assert {"kernel.mlp", "retrainer.dataset", "consumer.window", "kernel.store.file"} <= set(
        MODULES
    )


def test_importing_every_module_opens_no_socket_process_thread_or_kafka_client() -> None:
    result = subprocess.run(
        [sys.executable, "-c", GUARDED_IMPORT, json.dumps(MODULES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4_000:]
    assert json.loads(result.stdout.splitlines()[-1]) == MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed"


def test_the_packages_hold_examples() -> None:
    """Guards the walk itself: the known examples are found (a silent empty run fails)."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = {
        name
        for name in MODULES
        if any(t.examples for t in finder.find(importlib.import_module(name), name))
    }
    assert {"kernel.mlp", "retrainer.dataset", "consumer.window"} <= found
