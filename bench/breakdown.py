"""Where one round trip's time goes: timestamps at each step, in both processes.

``bench/run.py --only roundtrip --breakdown`` calls :func:`install` in its own process and
sets ``BENCH_BREAKDOWN_WORKER`` to a file for the worker it starts, whose bench app
(``bench/benchapp/apps.py``) calls it there: it wraps the library's own functions at each
step boundary with a recorder of ``time.time()`` (one clock for every process of the
machine). The worker appends its stamps to the file as they happen; the caller keeps its
own and joins both by job id (:func:`steps`). Measuring code only: nothing here changes
what the library does, and without ``--breakdown`` nothing is wrapped.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

#: The round trip's stamps, in the order they happen; a step is the time between two.
ORDER = (
    "call",  # enqueue_and_wait() called (the bench)
    "insert",  # INSERT sent (the subscribe was started before it, pipelined)
    "inserted",  # INSERT committed (autocommit)
    "woken",  # worker: "work available" received (hub thread)
    "claim",  # worker: claim statement sent
    "claimed",  # worker: claim committed
    "run",  # worker: job function starts
    "ran",  # worker: job function returned
    "ending",  # worker: completion statement sent
    "finished",  # worker: completion committed, job_finished() called
    "sent",  # worker: "finished" group_send done
    "delivered",  # caller: "finished" received, handed to the waiter (hub thread)
    "return",  # enqueue_and_wait() returned (the bench)
)
STEPS = {
    ("call", "insert"): "validate, start subscribe",
    ("insert", "inserted"): "INSERT + durable commit",
    ("inserted", "woken"): "wake-up: confirm subscribe, send, worker receives",
    ("woken", "claim"): "worker loop wakes",
    ("claim", "claimed"): "claim + commit",
    ("claimed", "run"): "hand-off to the job thread",
    ("run", "ran"): "run (echo)",
    ("ran", "ending"): "hand-back to the writer",
    ("ending", "finished"): "ending statement + commit",
    ("finished", "sent"): "notification: group_send",
    ("sent", "delivered"): "notification received by the waiter's hub",
    ("delivered", "return"): "waiter wakes, result",
}

#: The environment variable that names the worker's file of stamps.
WORKER_FILE = "BENCH_BREAKDOWN_WORKER"
_lock = threading.Lock()
_stamps: list[tuple[str, str, float]] = []  # (label, job id or "", time)
_path: list[str] = []  # the worker's file, once installed there
_installed: list[bool] = []
#: Why round trips were left out of the last :func:`steps`: a stamp missing, or out of order.
missing: Counter[str] = Counter()


def stamp(label: str, job_id: str = "") -> None:
    now = time.time()
    if _path:  # the worker: to the file at once (it may be killed)
        with _lock, open(_path[0], "a") as out:
            out.write(f"{label} {job_id or '-'} {now!r}\n")
    else:
        with _lock:
            _stamps.append((label, job_id, now))


def _wrap(owner: Any, name: str, before: Callable[..., Any] | None, after: Any = None) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(*args, **kwargs)
        result = original(*args, **kwargs)
        if after is not None:
            after(result, *args, **kwargs)
        return result

    setattr(owner, name, wrapper)


def install(path: str | None = None) -> None:
    """Wrap the step boundaries: in the bench's process (stamps kept in memory), or in a
    worker, whose bench app's ready() calls it with the file named by :data:`WORKER_FILE`."""
    if path:
        _path[:] = [path]
    if _installed:
        return
    _installed.append(True)
    from django_jobqueue.notifications.hub import Hub
    from django_jobqueue.notifications.waiters import Waiters
    from django_jobqueue.querysets.claiming import ClaimingQuerySet
    from django_jobqueue.querysets.outcomes import OutcomesQuerySet
    from django_jobqueue.querysets.producing import ProducingQuerySet
    from django_jobqueue.worker import attempt
    from django_jobqueue.worker.loop import Worker

    def ids(rows: Iterable[Any]) -> list[str]:
        return [row.job_id for row in rows]

    _wrap(
        ProducingQuerySet,
        "insert_new",
        lambda self, rows: [stamp("insert", i) for i in ids(rows)],
        lambda result, self, rows: [stamp("inserted", i) for i in ids(rows)],
    )
    _wrap(Worker, "_on_work", lambda self: stamp("woken"))
    _wrap(
        ClaimingQuerySet,
        "claim",
        lambda self, **kw: stamp("claim"),
        lambda result, self, **kw: [stamp("claimed", i) for i in ids(result)],
    )
    original_run = attempt.run

    def run(running: Any) -> Any:
        stamp("run", running.job.job_id)
        try:
            return original_run(running)
        finally:
            stamp("ran", running.job.job_id)

    attempt.run = run
    for name in ("complete", "complete_with_results"):
        _wrap(OutcomesQuerySet, name, lambda self, *a, **kw: stamp("ending"))
    _wrap(Hub, "job_finished", lambda self, job_ids, *a: [stamp("finished", i) for i in job_ids])
    original_send = Hub._send_finished

    async def send_finished(self: Any, job_ids: list[str], completed: Any) -> None:
        await original_send(self, job_ids, completed)
        for job_id in job_ids:
            stamp("sent", job_id)

    Hub._send_finished = send_finished  # type: ignore[method-assign]
    _wrap(
        Waiters,
        "deliver",
        lambda self, job_id, **kw: None if kw.get("progress") else stamp("delivered", job_id),
    )


def steps(calls: dict[str, tuple[float, float]], worker_file: str) -> dict[str, list[float]]:
    """Seconds of each step of each round trip whose stamps are all there; ``calls`` maps
    a job id to the bench's (call, return) times. A stamp without a job id (a wake-up, a
    claim or an ending statement) belongs to the round trip it falls inside."""
    by_job = {job_id: {"call": t0, "return": t1} for job_id, (t0, t1) in calls.items()}
    loose: list[tuple[str, float]] = []
    with open(worker_file) as stamped:
        lines = [line.split() for line in stamped.read().splitlines() if line.strip()]
    with _lock:
        mine = [(label, job_id or "-", when) for label, job_id, when in _stamps]
    for label, job_id, when in [*mine, *((a, b, float(c)) for a, b, c in lines)]:
        if job_id == "-":
            loose.append((label, when))
        elif job_id in by_job:
            by_job[job_id].setdefault(label, when)  # the first of each (retries aside)
    loose.sort(key=lambda item: item[1])
    for marks in by_job.values():
        if "claimed" not in marks or "ran" not in marks:
            continue
        # The last wake-up and claim statement before this job's claim returned; the first
        # ending statement after its run.
        before = [(label, when) for label, when in loose if when <= marks["claimed"]]
        for label in ("woken", "claim"):
            times = [when for each, when in before if each == label]
            if times:
                marks[label] = times[-1]
        endings = [when for label, when in loose if label == "ending" and when >= marks["ran"]]
        if endings:
            marks["ending"] = endings[0]
    result: dict[str, list[float]] = {name: [] for name in STEPS.values()}
    result["total"] = []
    missing.clear()
    for marks in by_job.values():
        if not all(label in marks for label in ORDER):
            missing.update(label for label in ORDER if label not in marks)
            continue
        if any(marks[a] > marks[b] for a, b in STEPS):
            missing.update(["out of order"])
            continue  # out of order (a wake-up that came after its claim began)
        for (a, b), name in STEPS.items():
            result[name].append(marks[b] - marks[a])
        result["total"].append(marks["return"] - marks["call"])
    return result


def last_inserted() -> str | None:
    """The job id of the latest INSERT stamped in this process."""
    with _lock:
        return next((job_id for label, job_id, _ in reversed(_stamps) if label == "insert"), None)


def clear() -> None:
    with _lock:
        _stamps.clear()
