"""Every `>>>` example in engine/ runs and shows what it says: a reader may copy one.

The modules are found by their text, so an example added anywhere in the package is run
without being listed here.
"""

from __future__ import annotations

import doctest
import importlib
import io
from pathlib import Path

import pytest

import engine

PACKAGE = Path(engine.__file__).parent


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _modules_with_examples()


def test_the_package_has_examples():
    # The search above must find what it is meant to; a path change would otherwise make
    # the parametrized test below vanish without failing.
    assert {"engine.rules.duration", "engine.names"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert tests, f"{name} contains '>>>' but no example doctest can find (not in a docstring?)"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = io.StringIO()
    for test in tests:
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()
