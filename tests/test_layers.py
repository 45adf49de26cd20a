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
