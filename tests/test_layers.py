"""The import-linter contracts in pyproject.toml place every module of their containers: a
module left out of its container's layers is checked by no inner contract at all."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.conftest import ROOT

_CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
    "contracts"
]


def _placed(layers: list[str]) -> set[str]:
    names = (name for layer in layers for name in re.split("[|:]", layer))
    return {name.strip().strip("()") for name in names}


@pytest.mark.parametrize(
    "contract", [c for c in _CONTRACTS if c.get("containers")], ids=lambda c: c["name"]
)
def test_every_module_of_a_container_has_a_layer(contract):
    placed = _placed(contract["layers"])
    for container in contract["containers"]:
        folder = ROOT.joinpath(*container.split("."))
        modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
        modules |= {p.parent.name for p in folder.glob("*/__init__.py")}
        assert modules - placed == set(), f"{container}: not in any layer of {contract['name']!r}"


#: The package's size bounds (ARCHITECTURE.md): one module, one concern.
MODULE_LINES, CLASS_LINES = 500, 300


def test_every_module_and_class_stays_small():
    """Every module of the package has at most 500 lines and every class at most 300
    (migrations aside): a module that grows past them holds two concerns."""
    import ast

    too_long = []
    for path in sorted((ROOT / "django_jobqueue").rglob("*.py")):
        if "migrations" in path.parts:
            continue
        source = path.read_text()
        name = path.relative_to(ROOT)
        if (lines := len(source.splitlines())) > MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > CLASS_LINES:
                    too_long.append(f"{name}:{node.name}: {size} lines")
    assert too_long == []
