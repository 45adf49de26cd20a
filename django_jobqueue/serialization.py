"""JSON checks at the call site: a value is accepted only if it comes back equal.

Arguments and results are stored as JSON, never pickled. Tuples are accepted and arrive
as lists; everything that would silently change (datetime, Decimal, set, bytes, NaN, a
NUL character, a non-str dict key) is refused with the path of the offending value.

The check walks a value once, in time and memory linear in its size: it counts the size
of the JSON text as it goes and builds the path of a value only to report it. Nesting is
bounded by ``JOBQUEUE["MAX_DEPTH"]``, so the walk never comes near Python's recursion
limit, and sizes by ``MAX_ARGS_BYTES`` and ``MAX_RESULT_BYTES`` (docs/guide/limits.md).
"""

from __future__ import annotations

import math
import reprlib
import sys
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring_ascii as _json_text
from typing import Any

from django.db.models import Model, QuerySet

from . import conf
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

_NUL = (
    "contains a NUL character (\\x00), which the database cannot store in JSON; remove it "
    "or encode the string."
)
_SURROGATE = (
    "contains a lone surrogate (such as '\\ud800'), which is not valid UTF-8; decode the "
    "text properly or pass it base64-encoded."
)
_TOO_DEEP = "too deep"  # formatted with the limit by _error()
_TOO_BIG = "too big"

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


class _Refused(Exception):
    """A value was refused below; each container adds its path segment on the way up.

    ``here``: the container that catches it first is the one at fault (a bad key), so it
    adds no segment of its own.
    """

    def __init__(self, reason: str, segment: str = "", *, here: bool = False) -> None:
        self.reason = reason
        self.segments = [segment] if segment else []
        self.here = here


def _size(value: Any, depth: int, limit: int) -> int:
    """The size of ``value`` as the JSON text sent to the database (``json.dumps``: ASCII,
    each escape counted, so ``"é"`` is 8 bytes and ``"\x01"`` 8); raise _Refused.

    ``depth``: how many more lists and dicts may nest here. ``limit``: stop counting (raise
    ``_TOO_BIG``) once a container is larger, so even a shared-reference bomb is cheap.
    """
    # Exact type checks first: they are the hot path for ordinary arguments.
    kind = type(value)
    if kind is str:
        return _text_size(value)
    if kind is int:
        bits = value.bit_length()
        if bits > _INT_BITS and abs(value) >= _INT_LIMIT:
            raise _Refused(
                f"is an int of more than {_INT_DIGITS} digits, which JSON cannot carry; "
                "pass str(value)."
            )
        return int(((bits - 1) * 1233 >> 12) + 1)  # about its number of digits
    if kind is bool or value is None:
        return 5
    if kind is float:
        if not math.isfinite(value):
            raise _Refused(
                f"is {value!r}, which JSON cannot represent; pass a finite number or None."
            )
        text = float.__repr__(value)
        if "e" in text and value.is_integer():
            # PostgreSQL's jsonb keeps 1e16 as the integer 10000000000000000.
            raise _Refused(
                f"is the float {text}, which PostgreSQL would give back as an int; pass "
                "int(value) or str(value)."
            )
        return len(text)
    if kind is list or kind is tuple or kind is dict:
        if not depth:
            raise _Refused(_TOO_DEEP)
        return _container_size(value, kind is dict, depth - 1, limit)
    # Subclasses of the plain types (str subclasses such as SafeString, IntEnum) round-trip
    # to an equal value: json.dumps writes their plain value. Anything else does not.
    if isinstance(value, str):
        return _size(str.__str__(value), depth, limit)
    if isinstance(value, int) and not isinstance(value, bool):
        return _size(int.__int__(value), depth, limit)
    if isinstance(value, float):
        return _size(float.__float__(value), depth, limit)
    raise _Refused(_unsupported(value))


def _container_size(value: Any, is_dict: bool, depth: int, limit: int) -> int:
    """The size of a list, tuple or dict whose items may nest ``depth`` more levels; on a
    refusal below, add this container's path segment (the index, or the key)."""
    size = 0  # each item adds itself and a separator: ", " or the closing bracket
    try:
        if is_dict:
            for key, item in value.items():
                size += _key_size(key) + 2
                size += _size(item, depth, limit) + 2
                if size > limit:
                    raise _Refused(_TOO_BIG, here=True)
        else:
            for item in value:
                size += _size(item, depth, limit) + 2
                if size > limit:
                    raise _Refused(_TOO_BIG, here=True)
    except _Refused as exc:
        if exc.here:
            exc.here = False
        elif exc.reason is not _TOO_BIG:
            segment = _key_repr(key) if is_dict else _index(value, item)
            exc.segments.append(f"[{segment}]")
        raise
    return size or 2


def _text_size(value: str) -> int:
    """Size of a str as JSON text, quotes and escapes included (``json.dumps`` writes ASCII:
    up to 6 bytes per character, 12 outside the BMP); refuse NUL and lone surrogates."""
    if "\x00" in value:
        raise _Refused(_NUL)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Refused(_SURROGATE) from None
    elif value.isprintable() and '"' not in value and "\\" not in value:
        return len(value) + 2  # the common case: nothing to escape
    return len(_json_text(value))


def _key_size(key: Any) -> int:
    if type(key) is not str:
        raise _Refused(
            f"has the key {_short.repr(key)} of type {type(key).__name__}; JSON object keys "
            "must be str (an int key would come back as a str).",
            here=True,
        )
    try:
        return _text_size(key)
    except _Refused as exc:
        exc.segments.append(f" key {_key_repr(key)}")
        exc.here = True
        raise


def _key_repr(key: str) -> str:
    """A dict key as a path segment: its repr, shortened if long (a path stays readable)."""
    if len(key) <= 60:
        return repr(key)
    return f"{key[:40]!r}...({len(key)} characters)"


def _index(container: Sequence[Any], item: Any) -> int:
    """The index of ``item``, found only to report it: the first identical item has the same
    verdict, so it is the one the walk refused."""
    for index, other in enumerate(container):
        if other is item:
            return index
    return -1  # pragma: no cover - the item came from the container


def _unsupported(value: Any) -> str:
    """Why ``value`` is refused, with Django's Tasks framework's own words in parentheses
    (``Unsupported type: <class ...>``), so code written against either recognises it."""
    kind = type(value)
    name = kind.__name__
    django = f"(Unsupported type: {kind})"
    if isinstance(value, Model):
        return (
            f"is a {kind.__module__}.{name} model instance {django}, which cannot be stored as "
            "JSON; pass its primary key (obj.pk) and load it in the job."
        )
    if isinstance(value, QuerySet):
        return (
            f"is a QuerySet {django}, which cannot be stored as JSON; pass a list of primary "
            "keys (list(qs.values_list('pk', flat=True))) and load them in the job."
        )
    hint = _HINTS.get(name)
    if hint is None and isinstance(value, Mapping | Sequence):
        hint = "convert it to a dict or a list"
    return (
        f"is a {kind.__module__}.{name}, which is not JSON-serializable without changing "
        f"it {django}; {hint or 'pass str, int, float, bool, None, lists or str-keyed dicts'}."
    )


def _error(
    exc: _Refused, path: str, max_depth: int, limit: int, setting: str
) -> SerializationError:
    if exc.reason is _TOO_BIG:
        return _too_big(path, limit, setting)
    path += "".join(reversed(exc.segments))
    reason = exc.reason
    if reason is _TOO_DEEP:
        reason = (
            f"is nested more than {max_depth} lists or dicts deep, the limit set by "
            "JOBQUEUE['MAX_DEPTH']; flatten the structure."
        )
    return SerializationError(f"{path} {reason}", path)


def _too_big(path: str, limit: int, setting: str) -> SerializationError:
    where = f", the limit set by JOBQUEUE[{setting!r}]" if setting else ""
    return SerializationError(
        f"{path} is larger than {limit} bytes as JSON{where}; store large data elsewhere "
        "(a file, object storage, a model) and pass its name or key.",
        path,
    )


def _check(value: Any, path: str, limit: int, setting: str) -> int:
    max_depth = conf.settings.MAX_DEPTH
    try:
        size = _size(value, max_depth, limit)
    except _Refused as exc:
        raise _error(exc, path, max_depth, limit, setting) from None
    if size > limit:
        raise _too_big(path, limit, setting)
    return size


def check_json(value: Any, path: str = "value", *, max_bytes: int | None = None) -> int:
    """Raise :class:`SerializationError` unless ``value`` survives a JSON round trip unchanged.

    Also refused: lists and dicts nested deeper than ``JOBQUEUE["MAX_DEPTH"]``, and, if
    ``max_bytes`` is given, a value whose JSON text is larger. Returns that size (the
    ASCII text ``json.dumps`` sends, escapes counted; numbers about). The error's
    ``path`` names the offending value, built from ``path``.
    """
    return _check(value, path, sys.maxsize if max_bytes is None else max_bytes, "")


def check_result(value: Any) -> None:
    """Raise :class:`SerializationError` unless a job's return value can be stored: JSON that
    comes back equal, within ``MAX_DEPTH`` and ``JOBQUEUE["MAX_RESULT_BYTES"]``.

    The worker calls it (through :func:`result_size`) on every return value, so a job that
    returns something it cannot store fails that attempt with this error (retried or
    dead-lettered like any failure) instead of failing the write.
    """
    result_size(value)


def result_size(value: Any) -> int:
    """:func:`check_result`, returning the value's size as JSON text (as sent, escapes counted)."""
    limit = conf.settings.MAX_RESULT_BYTES
    return _check(value, "result", limit, "MAX_RESULT_BYTES")


def check_call(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Check a job's positional and keyword arguments; return them as JSON-ready list and dict.

    Together they must fit in ``JOBQUEUE["MAX_ARGS_BYTES"]`` as JSON; each argument may nest
    ``MAX_DEPTH`` lists or dicts.
    """
    for key in kwargs:  # before the walk, to say "keyword argument names"
        if type(key) is not str:
            raise SerializationError(
                f"kwargs has the key {_short.repr(key)} of type {type(key).__name__}; keyword "
                "argument names must be str.",
                "kwargs",
            )
    max_depth = conf.settings.MAX_DEPTH
    limit = conf.settings.MAX_ARGS_BYTES
    positional = args if type(args) is tuple or type(args) is list else list(args)
    keywords = kwargs if type(kwargs) is dict else dict(kwargs)
    size = 0
    try:
        path = "args"
        size = _size(positional, max_depth + 1, limit)  # the list itself is not a level
        if keywords:
            path = "kwargs"
            size += _size(keywords, max_depth + 1, limit - size)
    except _Refused as exc:
        if exc.reason is _TOO_BIG:
            raise _too_big("The arguments", limit, "MAX_ARGS_BYTES") from None
        raise _error(exc, path, max_depth, limit, "MAX_ARGS_BYTES") from None
    if size > limit:
        raise _too_big("The arguments", limit, "MAX_ARGS_BYTES")
    return list(positional), dict(keywords)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with each character that is not printable (controls such as ESC or a
    newline, format characters such as a bidi override, line separators) written as its
    Python escape (``\\x1b``, ``\\n``, ``\\u202e``): for a value read from a row (a job id,
    a name, an error) on its way to a terminal or a log line, which it must not split or
    recolour. Printable text, of any script, is returned as it is."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if char in _ESCAPES:
        return _ESCAPES[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def clean_text(text: str, limit: int | None = None) -> str:
    """``text`` made storable in a text column: for error messages and tracebacks.

    NUL characters become ``\\x00`` and lone surrogates (common in file names from
    ``os.fsdecode``) their ``\\udcxx`` escape, which every database can store; text longer
    than ``limit`` UTF-8 bytes (default ``JOBQUEUE["MAX_ERROR_BYTES"]``) keeps its start and
    its end around a marker saying how many bytes were cut. Never raises for a str.
    """
    if limit is None:
        limit = conf.settings.MAX_ERROR_BYTES
    if type(text) is not str:
        text = str.__str__(text) if isinstance(text, str) else str(text)
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if text.isascii():
        if len(text) <= limit:
            return text
        data = text.encode("ascii")
    else:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            data = text.encode("utf-8", "backslashreplace")
            text = data.decode("utf-8")
        if len(data) <= limit:
            return text
    total = len(data)
    room = max(0, limit - len(_marker(total)))
    head = data[: room // 2].decode("utf-8", "ignore")
    tail = data[total - (room - room // 2) :].decode("utf-8", "ignore") if room else ""
    cut = total - len(head.encode("utf-8")) - len(tail.encode("utf-8"))
    return f"{head}{_marker(cut)}{tail}"


def _marker(cut: int) -> str:
    return f"\n[... {cut} bytes cut by django-jobqueue (JOBQUEUE['MAX_ERROR_BYTES']) ...]\n"


def check_metadata(value: Any) -> dict[str, Any] | None:
    """``.using(metadata=...)``: None, or a JSON object with str keys within
    ``JOBQUEUE["MAX_ARGS_BYTES"]``, like a job's arguments; return it as a plain dict."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SerializationError(
            f"metadata must be a dict with str keys, such as {{'tenant': 'acme'}}, not "
            f"{type(value).__name__}: {_short.repr(value)}.",
            "metadata",
        )
    metadata = dict(value)
    _check(metadata, "metadata", conf.settings.MAX_ARGS_BYTES, "MAX_ARGS_BYTES")
    return metadata
