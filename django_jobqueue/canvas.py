"""Chains and groups: ``job.bind(...)`` calls, composed, enqueued in one transaction.

``chain(a, b, c)`` runs each after the one before (``b`` is ``using(after=a)``); ``group(a,
b)`` runs side by side, and whatever follows a group in a chain runs after every member of
it. They nest: ``chain(group(a1.bind(), a2.bind()), merge.bind())``. Every job of a chain or
group is written in one transaction (a savepoint inside the caller's, if one is open): all or
none. Each job's own ``using(after=...)`` parents are kept besides those of its place.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, Union

from asgiref.sync import sync_to_async
from django.utils import timezone

from . import waiting
from .exceptions import InvalidJobError
from .handles import JobHandle, announce
from .producing import Step, insert_steps
from .registry import RegisteredJob


class Bindable(RegisteredJob, Protocol):
    """What a :class:`BoundJob` needs of its job: a registered job (``@job``'s
    ``JobFunction``) with its workflow options. Declared here so that this module names no
    module above it (``decorators`` imports this one)."""

    @property
    def after(self) -> tuple[str, ...]: ...

    @property
    def parent_failure(self) -> str: ...

    def using(self, **options: Any) -> Bindable: ...


Node = Union["BoundJob", "Chain", "Group"]


class BoundJob:
    """One call of a job with its arguments, checked, not enqueued (``job.bind(...)``).

    ``using(...)`` returns a copy with other options; ``enqueue()`` and
    ``enqueue_and_wait()`` make a one-job chain of it.
    """

    __slots__ = ("args", "job", "kwargs")

    def __init__(self, job: Bindable, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        job.new_job(args, kwargs)  # checks the arguments as enqueue() would; writes nothing
        self.job = job
        self.args = tuple(args)
        self.kwargs = dict(kwargs)

    def using(self, **options: Any) -> BoundJob:
        """A copy with other options (those of ``JobFunction.using``)."""
        return BoundJob(self.job.using(**options), self.args, self.kwargs)

    def _steps(self, after: tuple[str, ...]) -> tuple[list[Step], tuple[str, ...]]:
        new = self.job.new_job(self.args, self.kwargs, now=timezone.now())
        parents = tuple(dict.fromkeys((*self.job.after, *after)))
        return [(new, parents, self.job.parent_failure)], (new.job_id,)

    def enqueue(self) -> list[JobHandle]:
        """Enqueue this call (a chain of one job): its handle in a list."""
        return Chain(self).enqueue()

    def enqueue_and_wait(self, timeout: float | None = None) -> Any:
        """Enqueue this call and wait for its result."""
        return Chain(self).enqueue_and_wait(timeout)

    def __repr__(self) -> str:
        return f"<BoundJob {self.job.name}>"


def _nodes(items: Sequence[Any], what: str) -> tuple[Node, ...]:
    if not items:
        raise InvalidJobError(f"{what}() needs at least one job: pass job.bind(...) calls.")
    for item in items:
        if not isinstance(item, BoundJob | Chain | Group):
            hint = " (call .bind(...) on it with its arguments)" if hasattr(item, "bind") else ""
            raise InvalidJobError(
                f"{what}() takes bound jobs (job.bind(...)), chains and groups, not "
                f"{type(item).__name__}: {item!r}{hint}. Nothing was written."
            )
    return tuple(items)


class _Composite:
    """What chains and groups share: enqueueing and waiting."""

    items: tuple[Node, ...]

    def _steps(self, after: tuple[str, ...]) -> tuple[list[Step], tuple[str, ...]]:
        raise NotImplementedError

    def enqueue(self) -> list[JobHandle]:
        """Write every job, in one transaction; their handles, in order."""
        steps, _ends = self._steps(())
        return announce(insert_steps(steps))

    async def aenqueue(self) -> list[JobHandle]:
        """Async twin of :meth:`enqueue`."""
        steps, _ends = self._steps(())  # checked here, in the caller
        return await sync_to_async(lambda: announce(insert_steps(steps)))()

    def enqueue_and_wait(self, timeout: float | None = None) -> Any:
        """Enqueue, then wait for the last job (a group at the end: each of its last jobs,
        their results in a list) for ``timeout`` seconds in all (default
        ``WAIT_TIMEOUT``). Not inside ``transaction.atomic()``: workers could not see the
        jobs before the commit."""
        waiting.refuse_in_atomic(f"{type(self).__name__.lower()}().enqueue_and_wait()")
        seconds = waiting.resolve_timeout(timeout)
        steps, ends = self._steps(())
        last = _last(announce(insert_steps(steps, notify=True)), ends)
        deadline = time.monotonic() + seconds
        results = [handle.wait(max(0.001, deadline - time.monotonic())) for handle in last]
        return results[0] if self._single_end() else results

    async def aenqueue_and_wait(self, timeout: float | None = None) -> Any:
        """Async twin of :meth:`enqueue_and_wait`."""
        seconds = waiting.resolve_timeout(timeout)
        steps, ends = self._steps(())
        handles = await sync_to_async(lambda: announce(insert_steps(steps, notify=True)))()
        deadline = time.monotonic() + seconds
        results = [
            await handle.await_result(max(0.001, deadline - time.monotonic()))
            for handle in _last(handles, ends)
        ]
        return results[0] if self._single_end() else results

    def _single_end(self) -> bool:
        """Whether the last thing to run is one job (its result is returned as it is)."""
        node: Any = self
        while isinstance(node, Chain):
            node = node.items[-1]
        return isinstance(node, BoundJob)


def _last(handles: list[JobHandle], ends: tuple[str, ...]) -> list[JobHandle]:
    by_id = {handle.id: handle for handle in handles}
    return [by_id[job_id] for job_id in ends]


class Chain(_Composite):
    """Jobs (or groups, or chains) each run after the one before: see :func:`chain`."""

    def __init__(self, *items: Any) -> None:
        self.items = _nodes(items, "chain")

    def _steps(self, after: tuple[str, ...]) -> tuple[list[Step], tuple[str, ...]]:
        steps: list[Step] = []
        for item in self.items:
            more, after = item._steps(after)
            steps += more
        return steps, after


class Group(_Composite):
    """Jobs (or chains, or groups) run side by side: see :func:`group`."""

    def __init__(self, *items: Any) -> None:
        self.items = _nodes(items, "group")

    def _steps(self, after: tuple[str, ...]) -> tuple[list[Step], tuple[str, ...]]:
        steps: list[Step] = []
        ends: list[str] = []
        for item in self.items:
            more, last = item._steps(after)
            steps += more
            ends += last
        return steps, tuple(ends)


def chain(*items: Any) -> Chain:
    """Each item runs after the one before (after every job of a group); ``.enqueue()``
    returns every job's handle, ``.enqueue_and_wait(timeout)`` the last job's result."""
    return Chain(*items)


def group(*items: Any) -> Group:
    """The items run side by side; in a chain, what follows runs after all of them."""
    return Group(*items)
