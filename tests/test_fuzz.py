"""Fuzzing the call-site checks: whatever a caller passes, the check either accepts a value
that comes back equal, or raises SerializationError; never another exception, and in bounded
time and memory."""

from __future__ import annotations

import json
import math
import time
import tracemalloc
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Hypothesis imports this module lazily, from deep inside its recursive strategy checks; on
# CPython 3.11 pytest's assertion rewriting of it there can fail with "AST constructor recursion
# depth mismatch" (seen once in three runs). Imported here, at the top, it is never that deep.
pytest.importorskip("hypothesis.strategies._internal.flatmapped")

from django_jobqueue import SerializationError  # noqa: E402
from django_jobqueue.models import Job  # noqa: E402
from django_jobqueue.serialization import check_call, check_json, check_result  # noqa: E402

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # nothing written to .hypothesis/ in the work tree
    suppress_health_check=[HealthCheck.too_slow],
)

every_char = st.characters(codec=None, categories=None)  # surrogates and NUL included
texts = st.text(every_char, max_size=20) | st.text(max_size=20)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.builds(
        lambda digits, sign: sign * 10**digits, st.integers(4290, 4310), st.sampled_from([1, -1])
    )
    | st.floats()  # NaN, infinities, 1e16, subnormals
    | texts
    | st.binary(max_size=5)
    | st.decimals(allow_nan=True)
    | st.datetimes()
    | st.dates()
    | st.just(object())
)
keys = texts | st.integers() | st.booleans() | st.none() | st.tuples(st.integers())
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(keys, children, max_size=5)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=30,
)


def plain(value: Any) -> Any:
    """What JSON gives back: tuples as lists, str subclasses as str."""
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def depth(value: Any) -> int:
    if isinstance(value, list | tuple):
        return 1 + max((depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(item) for item in value.values()), default=0)
    return 0


@FUZZ
@given(values)
def test_check_json_accepts_only_what_round_trips(value):
    try:
        size = check_json(value)
    except SerializationError as exc:
        assert exc.path.startswith("value")
        return
    text = json.dumps(value)
    assert json.loads(text) == plain(value)
    assert isinstance(size, int) and size >= 0


@FUZZ
@given(st.lists(values, max_size=4), st.dictionaries(keys, values, max_size=4))
def test_check_call_accepts_only_what_round_trips(args, kwargs):
    try:
        call_args, call_kwargs = check_call(tuple(args), kwargs)
    except SerializationError as exc:
        assert exc.path.startswith(("args", "kwargs"))
        return
    assert json.loads(json.dumps([call_args, call_kwargs])) == [plain(args), plain(kwargs)]


@FUZZ
@given(values)
def test_check_result_agrees_with_check_json(value):
    outcomes = []
    for check in (check_json, check_result):
        try:
            check(value)
            outcomes.append(None)
        except SerializationError as exc:
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children)
    ),
    max_leaves=15,
)


@pytest.mark.django_db
@settings(max_examples=60, deadline=None, database=None)
@given(json_values)
def test_what_the_check_accepts_the_database_gives_back_equal(value):
    """The promise is about the database, not only json.dumps: jsonb on PostgreSQL."""
    try:
        check_call((value,), {})
    except SerializationError:
        return
    row = Job.objects.create(
        job_id="fuzz", name="n", queue="q", args=[value], max_attempts=1, result_ttl=1
    )
    try:
        assert Job.objects.get(pk=row.pk).args == [value]
    finally:
        row.delete()


@pytest.mark.parametrize("levels", [65, 1_000, 200_000])
@pytest.mark.parametrize("shape", ["list", "dict"])
def test_deep_values_cost_little_time_and_memory(shape, levels):
    value: Any = "leaf"
    for _ in range(levels):
        value = [value] if shape == "list" else {"k" * 1000: value}
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(SerializationError, match="MAX_DEPTH"):
            check_call((value,), {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1 and peak < 500_000


def test_wide_values_are_walked_once(settings):
    # 20,000 keys: a walk that went back over them (quadratic) would still take minutes, and
    # the linear one stays far from the bound under coverage's tracer on a busy machine
    # (100,000 keys took 4 to 8 s there). About 800 KB of JSON: over a 256 KiB limit.
    settings.JOBQUEUE = {**settings.JOBQUEUE, "MAX_ARGS_BYTES": 256 * 1024}
    wide = {f"key-{i}": [i, float(i) + 0.5, "x" * 10] for i in range(20_000)}
    started = time.perf_counter()
    size = check_json(wide)
    assert time.perf_counter() - started < 5
    assert abs(size - len(json.dumps(wide))) < 0.05 * size
    with pytest.raises(SerializationError, match="MAX_ARGS_BYTES"):
        check_call((wide,), {})


def test_refused_examples_seen_by_the_fuzzer_stay_refused():
    for value in (math.nan, 1e16, "\ud800", "\x00", Decimal(1), date(2024, 1, 1), datetime.now()):
        with pytest.raises(SerializationError):
            check_json({"k": [value]})
