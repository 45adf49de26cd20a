"""Unique jobs: the job id derived from a job's name and the arguments of a call.

``@job(unique=True)`` derives the id from every argument, ``@job(unique=("account_id",))``
from the named ones only. The call is bound to the function's signature first (defaults
applied), so ``f(1)``, ``f(x=1)`` and ``f(1, y=2)`` with ``y=2`` its default give the same id;
the values are written as canonical JSON (keys sorted, no spaces, ASCII) and hashed with
SHA-256, so the id is the same in every process, on every Python version, whatever the order
of the keyword arguments. The form (docs/guide/uniqueness.md)::

    u:<name>:<sha256 hex>                   @job(unique=...)
    u:<name>:<sha256 hex>:<period start>    @job(unique=..., unique_period=S)

where ``<period start>`` is ``floor(now / S) * S`` in Unix seconds, so each period has an
id of its own, and ``<name>`` is replaced by the first 32 hex digits of its SHA-256 when the
id would be longer than the 255 characters a job id may have.

Every enqueue path (``enqueue``, ``enqueue_many``, ``enqueue_and_wait`` and their async twins)
gets its id from :func:`unique_job_id`, through ``JobFunction.new_job``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from .exceptions import InvalidJobError
from .options import CELERY_WORDS, JOB_ID_MAX_LENGTH, USING_OPTIONS, did_you_mean

#: What every derived id starts with.
UNIQUE_PREFIX = "u:"
#: The longest ``unique_period``: a year, in seconds.
UNIQUE_PERIOD_MAX = 366 * 86400

#: ``True`` (every argument) or the names of the arguments that make the key.
Unique = bool | tuple[str, ...]


@functools.cache
def binder(
    func: Callable[..., Any], takes_context: bool
) -> tuple[inspect.Signature | None, int | None]:
    """``func``'s signature (less the context parameter), and its number of parameters when
    a call with exactly that many positional arguments and no keywords is certain to fit."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # a callable whose signature cannot be read: no check
        return None, None
    params = list(signature.parameters.values())
    if takes_context:
        params = params[1:]
        signature = signature.replace(parameters=params)
    simple = all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params)
    return signature, len(params) if simple else None


def check_signature(
    name: str,
    func: Callable[..., Any],
    takes_context: bool,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> None:
    """Refuse a call that does not fit the function, before anything is written: a worker
    would only fail it ``max_attempts`` times with the same TypeError."""
    signature, positional = binder(func, takes_context)
    if signature is None or (positional == len(args) and not kwargs):
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        hint = ""
        options = sorted(set(kwargs) & set(USING_OPTIONS) - set(signature.parameters))
        if options:
            given = ", ".join(f"{name}=..." for name in options)
            hint = f" {', '.join(map(repr, options))} is an option: pass it as .using({given})."
        for word in sorted(set(kwargs) & set(CELERY_WORDS) - set(signature.parameters)):
            hint += f" {word!r}{did_you_mean(word, ())}."
        raise InvalidJobError(
            f"{name}{signature} cannot take these arguments: {exc}.{hint} Nothing was written."
        ) from None


def check_unique(
    function: Callable[..., Any], name: str, unique: Any, takes_context: bool
) -> Unique:
    """``@job(unique=...)``: False, True, or a tuple of the function's parameter names."""
    if isinstance(unique, bool):
        return unique
    if isinstance(unique, str) or not isinstance(unique, tuple | list) or not unique:
        raise InvalidJobError(
            f"@job(unique=...) of {name} takes True (every argument) or a tuple of parameter "
            f"names such as unique=('account_id',), not {unique!r}."
        )
    names = tuple(unique)
    signature, _ = binder(function, takes_context)
    known = set(signature.parameters) if signature is not None else set()
    unknown = [n for n in names if not isinstance(n, str) or n not in known]
    if unknown or len(set(names)) != len(names):
        params = ", ".join(known) if known else "none that can be read"
        raise InvalidJobError(
            f"@job(unique={names!r}) of {name}: "
            + (f"{unknown[0]!r} is not a parameter" if unknown else "a name is repeated")
            + f"; its parameters are: {params}."
        )
    return names


def check_unique_period(value: Any, name: str, unique: Unique) -> int | None:
    """``@job(unique_period=S)``: None, or a positive number of whole seconds with ``unique``."""
    if value is None:
        return None
    if type(value) is not int or not 0 < value <= UNIQUE_PERIOD_MAX:
        raise InvalidJobError(
            f"@job(unique_period=...) of {name} takes a positive int of seconds up to "
            f"{UNIQUE_PERIOD_MAX} (a year), e.g. unique_period=3600, not {value!r}."
        )
    if not unique:
        raise InvalidJobError(
            f"@job(unique_period={value}) of {name} needs unique=True or unique=(...names): "
            "the period applies to a unique job's key."
        )
    return value


class UniqueJob(Protocol):
    """What :func:`unique_job_id` reads of a job (``JobFunction``)."""

    @property
    def name(self) -> str: ...
    @property
    def func(self) -> Callable[..., Any]: ...
    @property
    def takes_context(self) -> bool: ...
    @property
    def unique(self) -> Unique: ...
    @property
    def unique_period(self) -> int | None: ...


def unique_job_id(
    job: UniqueJob, args: Sequence[Any], kwargs: Mapping[str, Any], now: datetime
) -> str:
    """The job id of a call of the unique job ``job`` (the module's docstring gives the form).

    ``args`` and ``kwargs`` have passed the JSON checks; a default value of the function that
    is not JSON raises :class:`InvalidJobError`.
    """
    name, unique, period = job.name, job.unique, job.unique_period
    signature, _ = binder(job.func, job.takes_context)
    key: Any
    if signature is None:  # unreadable signature: the call as given
        key = {"args": list(args), "kwargs": dict(kwargs)}
    else:
        bound = signature.bind(*args, **kwargs)  # the call was checked against it
        bound.apply_defaults()
        values = bound.arguments
        key = {n: values[n] for n in (unique if isinstance(unique, tuple) else values)}
    try:
        text = json.dumps([name, key], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except (TypeError, ValueError) as exc:
        raise InvalidJobError(
            f"{name} is unique, but a default value of its parameters is not JSON ({exc}); "
            "pass that argument explicitly or give it a JSON default."
        ) from None
    digest = hashlib.sha256(text.encode("ascii")).hexdigest()
    tail = f":{digest}"
    if period is not None:
        tail += f":{int(now.timestamp()) // period * period}"
    job_id = f"{UNIQUE_PREFIX}{name}{tail}"
    if len(job_id) > JOB_ID_MAX_LENGTH:
        job_id = f"{UNIQUE_PREFIX}{hashlib.sha256(name.encode()).hexdigest()[:32]}{tail}"
    return job_id
