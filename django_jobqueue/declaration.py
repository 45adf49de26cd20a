"""Checks of a ``@job(...)`` declaration: the options that concern the function itself
(``takes_context``, ``retry_on``, ``atomic``, ``schedule``), each a clear
:class:`~django_jobqueue.exceptions.InvalidJobError` at decoration time. The options a call
can override too are checked by :mod:`django_jobqueue.options`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .cron import CronError, check_cron
from .exceptions import InvalidJobError
from .uniqueness import binder


def check_takes_context(function: Callable[..., Any], takes_context: Any) -> bool:
    if not isinstance(takes_context, bool):
        raise InvalidJobError(f"takes_context must be True or False, not {takes_context!r}.")
    if takes_context:
        try:
            params = list(inspect.signature(function).parameters.values())
        except (TypeError, ValueError):
            return True
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise InvalidJobError(
                f"@job(takes_context=True) passes a JobContext as the first argument, but "
                f"{function.__qualname__}{inspect.signature(function)} has no positional "
                "parameter for it: add one, e.g. def build(ctx, ...)."
            )
    return takes_context


def check_retry_on(value: Any) -> tuple[type[BaseException], ...] | None:
    if value is None:
        return None
    classes = value if isinstance(value, tuple) else (value,)
    if not classes or not all(
        isinstance(cls, type) and issubclass(cls, BaseException) for cls in classes
    ):
        raise InvalidJobError(
            "retry_on takes an exception class or a tuple of them, e.g. "
            f"retry_on=(ConnectionError, TimeoutError), not {value!r}."
        )
    return classes


def check_atomic(function: Callable[..., Any], name: str, atomic: Any) -> bool:
    if not isinstance(atomic, bool):
        raise InvalidJobError(f"@job(atomic=...) of {name} takes True or False, not {atomic!r}.")
    if atomic and inspect.iscoroutinefunction(function):
        raise InvalidJobError(
            f"@job(atomic=True) of {name}: an async def job cannot run inside the worker's "
            "transaction (its ORM calls run on another thread, outside it). Make it a plain "
            "def, or drop atomic=True and use transaction.atomic in a sync_to_async helper."
        )
    return atomic


def check_schedule(
    function: Callable[..., Any], name: str, schedule: Any, takes_context: bool
) -> str | None:
    if schedule is None:
        return None
    try:
        cron = check_cron(schedule, ran_is_enough=True)  # a year over: check refuses it
    except CronError as exc:
        raise InvalidJobError(f"@job(schedule=...) of {name}: {exc}.") from None
    signature, _ = binder(function, bool(takes_context))
    if signature is not None:
        try:
            signature.bind()
        except TypeError:
            raise InvalidJobError(
                f"@job(schedule=...): {name}{signature} is enqueued with no arguments on "
                "each tick, so it must take none; for arguments, add an entry to "
                'JOBQUEUE["SCHEDULE"] instead.'
            ) from None
    return cron
