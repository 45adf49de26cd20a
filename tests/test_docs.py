"""The documentation tells the truth: each test reads pages as text and compares what they say
with what the code declares (the nav, the options, the exceptions, the statuses, the admin's
actions, the extras, the settings' bounds), so a fact changed in the code fails here until
its pages follow. The settings and checks reference pages have tests of their own."""

from __future__ import annotations

import ast
import inspect
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from django.contrib import admin
from django.core import checks
from django.test import override_settings

from django_jobqueue import conf, exceptions, job
from django_jobqueue.base import ACTIVE, FINISHED, Status
from django_jobqueue.notifications.names import RESULT_IN_MESSAGE_BYTES
from django_jobqueue.options import USING_OPTIONS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: Pages whose tests live elsewhere (the settings table and the check ids).
REFERENCE_TESTED_ELSEWHERE = {"reference/settings.md", "reference/checks.md"}


def read(name: str) -> str:
    """A page of docs/ (``"guide/jobs.md"``), or ``"README.md"`` at the root."""
    return (ROOT / name if name == "README.md" else DOCS / name).read_text()


def every_page() -> Iterator[tuple[str, str]]:
    """``(name, text)`` of every page of docs/ and the README."""
    for path in sorted(DOCS.rglob("*.md")):
        yield path.relative_to(DOCS).as_posix(), path.read_text()
    yield "README.md", read("README.md")


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line) up to the next heading of its level."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n") + len(heading)
    ends = [m.start() for m in re.finditer(rf"^{level} ", text[start:], re.M)]
    return text[start : start + ends[0]] if ends else text[start:]


def sentences(text: str) -> Iterator[str]:
    """The sentences of ``text``, each on one line (code blocks left out)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for paragraph in re.split(r"\n\s*\n|\n(?=\s*(?:[-*|]|\d+\.) )", prose):
        yield from re.split(r"(?<=[.!?])\s+(?=[A-Z`\"(])", " ".join(paragraph.split()))


def links(text: str) -> set[str]:
    """The targets of the Markdown links of ``text``, without their anchors."""
    return {target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", text)}


# -- every page can be reached ------------------------------------------------------------------


def nav_pages() -> list[str]:
    def walk(items: list[object]) -> Iterator[str]:
        for item in items:
            if isinstance(item, str):
                yield item
            elif isinstance(item, dict):
                for value in item.values():
                    yield from walk(value) if isinstance(value, list) else walk([value])

    return list(walk(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]))


def test_the_index_links_every_page_of_the_nav():
    missing = set(nav_pages()) - {"index.md"} - links(read("index.md"))
    assert not missing, f"docs/index.md does not link {sorted(missing)}"


def test_the_readme_links_every_page_of_the_nav():
    missing = {f"docs/{name}" for name in nav_pages()} - links(read("README.md"))
    assert not missing, f"README.md does not link {sorted(missing)}"


# -- time limits ----------------------------------------------------------------------------------


def test_no_page_says_a_job_has_no_time_limit():
    for name, text in every_page():
        for sentence in sentences(text):
            assert not re.search(
                r"\bno time limit on\b|\bjobs? (has|have) no time limit", sentence, re.I
            ), f"{name}: {sentence!r}: jobs have a time_limit (docs/guide/time-limits.md)"
    assert "time-limits.md" in links(read("guide/worker.md"))


# -- what a message on the channel layer carries ---------------------------------------------------

#: How the pages write the bound on a result carried in a "finished" message.
RESULT_BOUND = f"{RESULT_IN_MESSAGE_BYTES:,} bytes"


def test_pages_that_say_what_a_message_carries_give_the_result_bound():
    """A "finished" message carries a completed job's result up to RESULT_IN_MESSAGE_BYTES:
    a sentence about messages and results that denies or limits it must state that bound."""
    about = re.compile(r"\b(message|notification|channel layer)s?\b", re.I)
    result = re.compile(r"\bresults?\b", re.I)
    limiting = re.compile(r"\b(never|no|nothing|not|only|always)\b", re.I)
    denial = re.compile(r"carr(y|ies) no result|never (carries|carry)[^.]*results?")
    wrong = []
    for name, text in every_page():
        for sentence in sentences(text):
            if not (about.search(sentence) and result.search(sentence)):
                continue
            unbounded = RESULT_BOUND not in sentence and "database" not in sentence
            if (limiting.search(sentence) and unbounded) or denial.search(sentence):
                wrong.append(f"{name}: {sentence}")
    assert not wrong, "\n".join(wrong)
    for name in ("index.md", "guide/waiting.md", "guide/limits.md", "guide/live-progress.md"):
        assert RESULT_BOUND in read(name), (
            f"{name} does not say a result rides up to {RESULT_BOUND}"
        )


# -- settings' minimums stated in the guides ---------------------------------------------------


def stated_minimums() -> Iterator[tuple[str, str, float, bool]]:
    """``(page, setting, minimum, excluded)`` for each "`SETTING` ... at least N" (or "more
    than N": ``excluded``) outside the settings reference (whose own test compares it with
    the table)."""
    names = "|".join(sorted(conf.DEFAULTS, key=len, reverse=True))
    pattern = re.compile(
        rf"`(?:JOBQUEUE\[\")?({names})(?:\"\])?`[^.]*?\b(at least|more than) "
        r"(\d[\d,]*(?:\.\d+)?)\b"
    )
    for name, text in every_page():
        if name in REFERENCE_TESTED_ELSEWHERE:
            continue
        for sentence in sentences(text):
            for match in pattern.finditer(sentence):
                minimum = float(match.group(3).replace(",", ""))
                yield name, match.group(1), minimum, match.group(2) == "more than"


def setting_errors(name: str, value: float) -> list[str]:
    """The check errors about ``JOBQUEUE[name] = value``."""
    with override_settings(JOBQUEUE={name: value}):
        found = checks.run_checks(include_deployment_checks=False)
    return [str(m) for m in found if m.level >= checks.ERROR and name in f"{m.msg} {m.hint}"]


@pytest.mark.django_db
def test_a_minimum_stated_in_the_guides_is_the_one_check_enforces():
    stated = list(stated_minimums())
    for page, name, minimum, excluded in stated:
        value: float = int(minimum) if minimum.is_integer() else minimum
        if excluded:  # "more than N": N is refused, just above it passes
            assert setting_errors(name, value), f"{page}: {name} more than {value}, but it passes"
            assert not setting_errors(name, value + 0.001), f"{page}: {name} more than {value}"
            continue
        assert not setting_errors(name, value), (
            f"{page}: {name} at least {value}, but it is refused"
        )
        below = value - (1 if setting_errors(name, value + 0.5) else 0.001)
        assert setting_errors(name, below), f"{page}: {name} at least {value}, but {below} passes"
    assert "WAIT_TIMEOUT" in {name for page, name, *_ in stated if page == "guide/waiting.md"}


# -- options: every option of @job and .using() on both pages ------------------------------------


def job_options() -> list[str]:
    parameters = inspect.signature(job).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def table_options(text: str) -> set[str]:
    return set(re.findall(r"^\| `(\w+)` \|", text, re.M))


def test_every_job_option_is_in_the_jobs_guide_and_the_api_reference():
    guide = section(read("guide/jobs.md"), "## The `@job` decorator")
    assert set(job_options()) <= table_options(guide), set(job_options()) - table_options(guide)
    signature = section(read("reference/api.md"), "## `job`").split("```")[1]
    missing = [name for name in job_options() if f"{name}=" not in signature]
    assert not missing, f"reference/api.md's job(...) lacks {missing}"


def test_every_using_option_is_in_the_jobs_guide_and_the_api_reference():
    text = read("guide/jobs.md")
    guide = section(text, "## Per-call options: `using()`")
    assert set(USING_OPTIONS) <= table_options(guide), set(USING_OPTIONS) - table_options(guide)
    assert f"valid options are: {', '.join(USING_OPTIONS)}." in text
    api = section(read("reference/api.md"), "## `JobFunction`")
    entry = api.split("`using(**options) -> JobFunction`", 1)[1].split("\n\n", 1)[0]
    missing = [name for name in USING_OPTIONS if f"`{name}`" not in entry]
    assert not missing, f"reference/api.md's using() lacks {missing}"


# -- exceptions: each documented once -------------------------------------------------------------


def exception_classes() -> list[type[BaseException]]:
    return [
        value
        for value in vars(exceptions).values()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == exceptions.__name__
    ]


def test_each_exception_is_documented_once():
    text = read("reference/api.md")
    tree = section(text, "## Exceptions").split("```")[1]
    for cls in exception_classes():
        name = cls.__name__
        entries = re.findall(rf"^(?:`{name}(?:\(.*\))?`|## `{name}`)$", text, re.M)
        assert len(entries) == 1, f"reference/api.md describes {name} {len(entries)} times"
        in_tree = len(re.findall(rf"\b{name}\b", tree))
        expected = 1 if issubclass(cls, exceptions.JobQueueError) else in_tree
        assert in_tree == expected and in_tree <= 1, f"{name} is {in_tree} times in the tree"


def waiting_errors() -> list[str]:
    """The exceptions a wait raises: those ``django_jobqueue/waiting.py`` imports."""
    tree = ast.parse((ROOT / "django_jobqueue" / "waiting.py").read_text())
    return [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "exceptions"
        for alias in node.names
    ]


def test_every_error_of_a_wait_is_documented_where_waits_are():
    errors = waiting_errors()
    assert {"JobTimeoutError", "JobFailedError", "JobCancelledError"} <= set(errors)
    guide = section(read("guide/waiting.md"), "## Errors")
    missing = [name for name in errors if f"### `{name}`" not in guide]
    assert not missing, f"guide/waiting.md's Errors lack {missing}"
    api = read("reference/api.md")
    for entry in ("`enqueue_and_wait(*args, **kwargs) -> Any`", "`wait(timeout=None) -> Any`"):
        text = api.split(entry, 1)[1].split("\n\n", 1)[0]
        missing = [name for name in errors if f"`{name}`" not in text]
        assert not missing, f"reference/api.md's {entry} does not say it raises {missing}"


# -- statuses: every list of them is whole -------------------------------------------------------


def status_lists(text: str) -> Iterator[tuple[str, set[str]]]:
    """``(the text, its statuses)`` of each list of three or more status values."""
    word = "(?:" + "|".join(s.value for s in Status) + ")"
    quote = r"[`\"'*]*"
    sep = rf"{quote}(?:\s*,\s*(?:or\s+|and\s+)?|\s+or\s+|\s+and\s+|\s*/\s*){quote}"
    for match in re.finditer(rf"\b{word}(?:{sep}{word}){{2,}}\b", text, re.I):
        yield match.group(0), {v.lower() for v in re.findall(word, match.group(0), re.I)}


def test_every_list_of_statuses_is_whole():
    """A list of statuses names them all, or exactly the finished ones (``base.FINISHED``),
    or exactly the unfinished ones (``base.ACTIVE``): the groups the code declares."""
    whole = {s.value for s in Status}
    wrong = [
        f"{name}: {listed!r}"
        for name, text in every_page()
        for listed, values in status_lists(text)
        if values not in (whole, set(FINISHED), set(ACTIVE))
    ]
    assert not wrong, f"lists missing a status of {sorted(whole)}: {wrong}"


# -- the admin's actions ---------------------------------------------------------------------------


def test_every_admin_action_is_documented():
    text = read("admin.md")
    found = 0
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label != "django_jobqueue":
            continue
        for action in model_admin.actions or ():
            found_action = model_admin.get_action(action)
            if hasattr(found_action, "description"):  # Django 6: an Action
                name, description = found_action.name, found_action.description
            else:  # Django 5.2: (function, name, description)
                _, name, description = found_action
            found += 1
            label = "Delete selected" if name == "delete_selected" else str(description)
            assert f"**{label}**" in text, f"docs/admin.md does not document {label!r}"
    assert found >= 4


# -- the extras' install lines ---------------------------------------------------------------------

INSTALL = re.compile(r"pip install\s+\"?([^\"\s\[]*)django-jobqueue\[([^\]]+)\]")


def extras() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["optional-dependencies"]) - {"dev"}


def test_every_extra_is_shown_with_the_right_install_line():
    """Not on PyPI yet: an extra is installed from a clone, ``"./django-jobqueue[extra]"``."""
    shown: set[str] = set()
    for name, text in every_page():
        for prefix, listed in INSTALL.findall(text):
            names = {extra.strip() for extra in listed.split(",")}
            assert prefix == "./", f"{name}: install {listed} from a clone, './django-jobqueue'"
            assert names <= extras(), f"{name}: no such extra {sorted(names - extras())}"
            shown |= names
    assert extras() <= shown, f"no install line for {sorted(extras() - shown)}"
    production = read("guide/production.md")
    missing = [extra for extra in extras() if f"- `{extra}`:" not in production]
    assert not missing, f"guide/production.md's list of extras lacks {missing}"


@pytest.mark.parametrize("extra", sorted(extras()))
def test_the_quickstart_table_has_every_extra(extra):
    assert f"| `{extra}` |" in read("quickstart.md")


# -- the comparison names the peers it measured ----------------------------------------------------


def peer_requirements() -> list[str]:
    """``bench/peers.py``'s PEER_REQUIREMENTS, read without importing the benchmark."""
    tree = ast.parse((ROOT / "bench" / "peers.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "PEER_REQUIREMENTS"
            for target in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError("bench/peers.py has no PEER_REQUIREMENTS")


def test_the_peers_are_pinned_and_the_comparison_names_their_versions():
    pinned = {}
    for requirement in peer_requirements():
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[\w,]+\])?==([\w.]+)", requirement)
        assert match, f"bench/peers.py: pin {requirement!r} to one version (name==X.Y.Z)"
        pinned[match.group(1).lower()] = match.group(2)
    text = read("reference/comparison.md").lower()
    for peer in ("celery", "dramatiq", "huey", "procrastinate", "django-tasks-db"):
        assert f"{peer} {pinned[peer]}" in text, (
            f"comparison.md does not name {peer} {pinned[peer]}"
        )
