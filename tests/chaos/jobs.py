"""The chaos jobs. Each writes the ledger (``ledger.py``) and returns a value the waiter
can check: ``{"v": <expected>, "attempt": <the attempt that produced it>}``.

``CHAOS_OLD_CODE=1`` is the code of the previous release: ``chaos.fresh`` does not exist in
it (the rolling-deploy fault runs one host on it).
"""

from __future__ import annotations

import os
import time
from typing import Any

from django_jobqueue import JobContext, job

from . import ledger

#: Seconds a job works (short: the point is many jobs through many faults).
WORK = float(os.environ.get("CHAOS_WORK_SECONDS", "0.2"))


def _run(ctx: JobContext, kind: str, value: Any, grp: str = "", seq: int = 0) -> dict[str, Any]:
    ledger.write(ctx.job_id, kind, "start", ctx.attempt, grp, seq)
    time.sleep(WORK)
    ledger.write(ctx.job_id, kind, "end", ctx.attempt, grp, seq)
    return {"v": value, "attempt": ctx.attempt}


@job(name="chaos.plain", takes_context=True)
def plain(ctx: JobContext, n: int) -> dict[str, Any]:
    return _run(ctx, "plain", n * 2)


@job(name="chaos.grouped", takes_context=True)
def grouped(ctx: JobContext, grp: str, seq: int) -> dict[str, Any]:
    return _run(ctx, "grouped", seq, grp, seq)


@job(name="chaos.limited", takes_context=True, limit="chaos-limit")
def limited(ctx: JobContext, n: int) -> dict[str, Any]:
    return _run(ctx, "limited", n + 1)


@job(name="chaos.tick", takes_context=True, schedule="* * * * *")
def tick(ctx: JobContext) -> dict[str, Any]:
    return _run(ctx, "tick", 0)


@job(name="chaos.step", takes_context=True)
def step(ctx: JobContext, n: int, index: int) -> dict[str, Any]:
    """A job of a workflow (a chain with a group, in a batch): ``grp`` is its workflow,
    ``seq`` its place in it."""
    return _run(ctx, "step", n * 10 + index, f"wf{n}", index)


@job(name="chaos.callback", takes_context=True)
def callback(ctx: JobContext, n: int) -> dict[str, Any]:
    """A batch's ``on_complete``: ``grp`` is the batch's workflow."""
    return _run(ctx, "callback", n, f"wf{n}")


if os.environ.get("CHAOS_OLD_CODE") != "1":

    @job(name="chaos.fresh", takes_context=True)
    def fresh(ctx: JobContext, n: int) -> dict[str, Any]:
        return _run(ctx, "fresh", n * 3)


def _atomic_job() -> Any:
    """``@job(atomic=True)`` where this version of the package has it, else None."""
    try:
        decorate = job(name="chaos.atomic", takes_context=True, atomic=True)  # type: ignore[call-overload]
    except TypeError:
        return None

    def atomic_effect(ctx: JobContext, n: int) -> dict[str, Any]:
        ledger.write(ctx.job_id, "atomic", "effect", ctx.attempt)
        time.sleep(WORK)
        return {"v": n * 5, "attempt": ctx.attempt}

    return decorate(atomic_effect)


atomic_effect = _atomic_job()
