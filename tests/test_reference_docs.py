"""The reference pages say what the code does: docs/reference/settings.md against the table of
``JOBQUEUE`` keys (``conf.Settings``), docs/reference/checks.md against the check ids the
package reports, and no page naming an id that does not exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from django_jobqueue import conf
from django_jobqueue.checks import FAULT_IDS
from django_jobqueue.conf import KEYS, Key, number

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_PAGE = (ROOT / "docs" / "reference" / "settings.md").read_text()
CHECKS_PAGE = (ROOT / "docs" / "reference" / "checks.md").read_text()
ID = re.compile(r"\b([EW]\d{3})\b")
KINDS = {int: "int", float: "number", bool: "bool", str: "str", object: "dict", list: "list"}


def _literal(value: Any) -> str:
    """A default as the page writes it: Python, with double quotes."""
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _rows() -> dict[str, list[str]]:
    rows = {}
    for line in SETTINGS_PAGE.splitlines():
        found = re.match(r"\| \[`(\w+)`\]\(#(\w+)\) \|(.*)\|$", line)
        if found:
            assert found[2] == found[1].lower(), line
            rows[found[1]] = [cell.strip() for cell in found[3].split("|")]
    return rows


def _sections() -> dict[str, str]:
    parts = re.split(r"^## `(\w+)`\n", SETTINGS_PAGE, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


ROWS = _rows()
SECTIONS = _sections()


def test_the_example_lists_every_key_with_its_default():
    block = re.search(r"```python\nJOBQUEUE = (\{.*?\n\})\n```", SETTINGS_PAGE, re.DOTALL)
    assert block, "the page opens with JOBQUEUE = {...} and every default"
    example = ast.literal_eval(block[1])
    assert list(example) == list(KEYS)
    assert example == conf.DEFAULTS


def test_the_table_has_a_row_per_key():
    assert list(ROWS) == list(KEYS)


@pytest.mark.parametrize(("name", "key"), KEYS.items(), ids=list(KEYS))
def test_each_row_states_the_type_default_and_bounds_of_the_table(name: str, key: Key[Any]):
    kind, default, low, high = ROWS[name]
    assert kind.startswith(KINDS[key.kind] + (" or `None`" if key.none else "")), kind
    assert default == f"`{_literal(key.default)}`"
    minimum = "" if key.minimum is None else f"`{number(key.minimum)}`"
    assert low == (f"more than {minimum}" if key.above else minimum)
    maximum = "" if key.maximum is None else f"`{number(key.maximum)}`"
    assert high.startswith(maximum) and (high == "" or maximum), high


@pytest.mark.parametrize(("name", "key"), KEYS.items(), ids=list(KEYS))
def test_each_key_has_a_section_with_its_default(name: str, key: Key[Any]):
    body = SECTIONS[name]
    assert body.startswith(f"\nDefault: `{_literal(key.default)}`"), body[:80]
    assert len(body.split()) > 10, f"the section of {name} says too little"


@pytest.mark.parametrize(("name", "key"), KEYS.items(), ids=list(KEYS))
def test_no_section_states_another_minimum(name: str, key: Key[Any]):
    """WAIT_TIMEOUT's section said "at least 0" while a timeout of 0 was refused."""
    body = " ".join(SECTIONS[name].split())
    for phrase, bound in re.findall(r"\b(at least|more than|from) ([\d.,]+\d)\b", body):
        assert key.minimum is not None, (name, phrase, bound)
        stated = float(bound.replace(",", ""))
        assert stated == key.minimum, (name, phrase, bound)
        assert (phrase == "more than") == key.above, (name, phrase, bound)


def test_no_empty_sections():
    assert set(SECTIONS) == set(KEYS)


# -- checks ------------------------------------------------------------------------------


def _reported_ids() -> set[str]:
    """Every check id the package can report: each is written once, where it is reported."""
    found = set()
    for path in (ROOT / "django_jobqueue").rglob("*.py"):
        found |= set(re.findall(r"django_jobqueue\.([EW]\d{3})\b", path.read_text()))
    return found


def _documented() -> dict[str, str]:
    """Each id the checks page explains, with its explanation."""
    parts = re.split(r"^- \*\*`django_jobqueue\.([EW]\d{3})`\*\*", CHECKS_PAGE, flags=re.MULTILINE)
    ids = parts[1::2]
    assert len(ids) == len(set(ids)), "an id explained twice"
    return dict(zip(ids, parts[2::2], strict=True))


def test_the_checks_page_explains_every_id_and_only_those():
    documented = _documented()
    assert set(documented) == _reported_ids()


def test_no_page_names_an_id_that_does_not_exist():
    reported = _reported_ids()
    pages = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
    for page in pages:
        unknown = set(ID.findall(page.read_text())) - reported
        assert not unknown, f"{page.relative_to(ROOT)} names {sorted(unknown)}"


@pytest.mark.parametrize("name", list(KEYS))
def test_a_setting_names_only_ids_that_concern_it(name: str):
    """LIMITS' section named E010 and LIMITS_CACHE's E011: the ids of NaN and of a maximum.
    An id named in a key's section is one whose explanation names the key, or one that any
    key can have."""
    documented = _documented()
    any_key = {check_id.split(".")[1] for check_id in FAULT_IDS.values()}
    for found in ID.findall(SECTIONS[name]):
        assert found in any_key or name.lower() in documented[found].lower(), (name, found)
