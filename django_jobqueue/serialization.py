"""JSON checks at the call site: a value is accepted only if it comes back equal.

Arguments and results are stored as JSON, never pickled. Tuples are accepted and arrive
as lists; everything that would silently change (datetime, Decimal, set, bytes, NaN, a
NUL character, a non-str dict key) is refused with the path of the offending value.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .exceptions import SerializationError

#: Python's int-to-str limit (sys.get_int_max_str_digits()): json.dumps fails beyond it.
_INT_DIGITS = sys.get_int_max_str_digits() or 4300
_INT_LIMIT = 10**_INT_DIGITS
_INT_BITS = int(_INT_DIGITS * 3.32) - 8  # below this many bits an int is surely shorter

_HINTS: dict[str, str] = {
    "datetime": "pass value.isoformat() and parse it in the job",
    "date": "pass value.isoformat() and parse it in the job",
    "time": "pass value.isoformat() and parse it in the job",
    "timedelta": "pass value.total_seconds()",
    "Decimal": "pass str(value) and rebuild the Decimal in the job",
    "UUID": "pass str(value)",
    "set": "pass sorted(value) or list(value)",
    "frozenset": "pass sorted(value) or list(value)",
    "bytes": "pass base64.b64encode(value).decode()",
    "bytearray": "pass base64.b64encode(value).decode()",
}


def check_json(value: Any, path: str = "value") -> None:
    """Raise :class:`SerializationError` unless ``value`` survives a JSON round trip unchanged."""
    # Exact type checks first: they are the hot path for ordinary arguments.
    kind = type(value)
    if kind is str:
        _check_str(value, path)
        return
    if kind is bool or value is None:
        return
    if kind is int:
        if value.bit_length() > _INT_BITS and abs(value) >= _INT_LIMIT:
            raise SerializationError(
                f"{path} is an int of more than {_INT_DIGITS} digits, which JSON cannot "
                "carry; pass str(value).",
                path,
            )
        return
    if kind is float:
        if not math.isfinite(value):
            raise SerializationError(
                f"{path} is {value!r}, which JSON cannot represent; pass a finite number or None.",
                path,
            )
        if value.is_integer() and "e" in repr(value):
            # PostgreSQL's jsonb keeps 1e16 as the integer 10000000000000000.
            raise SerializationError(
                f"{path} is the float {value!r}, which PostgreSQL would give back as an "
                "int; pass int(value) or str(value).",
                path,
            )
        return
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            check_json(item, f"{path}[{index}]")
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise SerializationError(
                    f"{path} has the key {key!r} of type {type(key).__name__}; JSON object "
                    "keys must be str (an int key would come back as a str).",
                    path,
                )
            check_json(key, f"{path} key {key!r}")
            check_json(item, f"{path}[{key!r}]")
        return
    # Subclasses of the plain types (str subclasses such as SafeString, IntEnum) round-trip
    # to an equal value; anything else does not.
    if isinstance(value, str | int) and not isinstance(value, bool):
        check_json(str(value) if isinstance(value, str) else int(value), path)
        return
    if isinstance(value, float):
        check_json(float(value), path)
        return
    name = kind.__name__
    hint = _HINTS.get(name)
    if hint is None and isinstance(value, Mapping | Sequence):
        hint = "convert it to a dict or a list"
    raise SerializationError(
        f"{path} is a {kind.__module__}.{name}, which is not JSON-serializable without "
        f"changing it; {hint or 'pass str, int, float, bool, None, lists or str-keyed dicts'}.",
        path,
    )


def _check_str(value: str, path: str) -> None:
    if "\x00" in value:
        raise SerializationError(
            f"{path} contains a NUL character (\\x00), which the database cannot store "
            "in JSON; remove it or encode the string.",
            path,
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise SerializationError(
                f"{path} contains a lone surrogate (such as '\\ud800'), which is not valid "
                "UTF-8; decode the text properly or pass it base64-encoded.",
                path,
            ) from None


def check_call(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Check a job's positional and keyword arguments; return them as JSON-ready list and dict."""
    for index, item in enumerate(args):
        check_json(item, f"args[{index}]")
    for key, item in kwargs.items():
        if type(key) is not str:
            raise SerializationError(
                f"kwargs has the key {key!r} of type {type(key).__name__}; keyword argument "
                "names must be str.",
                "kwargs",
            )
        check_json(key, f"kwargs key {key!r}")
        check_json(item, f"kwargs[{key!r}]")
    return list(args), dict(kwargs)
