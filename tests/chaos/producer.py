"""The producer host: enqueues and waits throughout the chaos, and writes what each call
gave to a JSON-lines file (one line per call) for the checker.

``python -m tests.chaos.producer <out.jsonl> <stop-file> <seed>``: runs until the stop
file exists. Three threads: waiters (``enqueue_and_wait`` with a timeout), fire-and-forget
enqueues, groups (each group's jobs enqueued in order, one at a time), and workflows (a
chain with a group, in a batch with an ``on_complete`` callback), where the package has them.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.chaos.settings")
django.setup()

from django.db import connection  # noqa: E402

from django_jobqueue import JobCancelledError, JobFailedError, JobTimeoutError  # noqa: E402
from tests.chaos import jobs  # noqa: E402

WAIT_TIMEOUT = 8.0
GROUPS = ("g0", "g1", "g2")
_lock = threading.Lock()


def _expected(kind: str, n: int) -> int:
    return {"plain": n * 2, "fresh": n * 3, "limited": n + 1, "atomic": n * 5}[kind]


def _definition(kind: str) -> Any:
    return {
        "plain": jobs.plain,
        "fresh": getattr(jobs, "fresh", None),
        "limited": jobs.limited,
        "atomic": jobs.atomic_effect,
    }[kind]


class Producer:
    def __init__(self, out: Path, stop: Path, seed: int) -> None:
        self.out = out.open("a", buffering=1)
        self.stop = stop
        self.seed = seed
        self.kinds = ["plain", "plain", "fresh", "limited"]
        if jobs.atomic_effect is not None:
            self.kinds.append("atomic")

    def record(self, **fields: Any) -> None:
        with _lock:
            self.out.write(json.dumps(fields) + "\n")

    def running(self) -> bool:
        return not self.stop.exists()

    def _enqueue(self, job_id: str, call: Any, *args: Any) -> bool:
        """Enqueue (retrying the same id: deduplication makes a retry after an ambiguous
        commit safe); record the outcome."""
        for attempt in range(20):
            try:
                call(*args)
            except Exception as exc:
                self.record(job_id=job_id, call="enqueue", outcome="error", error=repr(exc)[:200])
                connection.close()
                time.sleep(0.5)
                continue
            self.record(job_id=job_id, call="enqueue", outcome="ok", tries=attempt + 1)
            return True
        return False

    def waiters(self, index: int, rng: random.Random) -> None:
        n = 0
        while self.running():
            n += 1
            kind = rng.choice(self.kinds)
            job_id = f"w{index}-{kind}-{self.seed}-{n}"
            started = time.monotonic()
            fields: dict[str, Any] = {"job_id": job_id, "call": "wait", "kind": kind}
            fields["at"] = time.time()  # this machine's clock, as the fault windows
            fields["expected"] = _expected(kind, n)
            fields["timeout"] = WAIT_TIMEOUT
            try:
                value = (
                    _definition(kind).using(job_id=job_id, timeout=WAIT_TIMEOUT).enqueue_and_wait(n)
                )
                fields.update(outcome="value", got=value)
            except JobTimeoutError:
                fields.update(outcome="timeout")
            except (JobFailedError, JobCancelledError) as exc:
                fields.update(outcome="failed", error=str(exc)[:300])
            except Exception as exc:
                fields.update(outcome="error", error=repr(exc)[:300])
                connection.close()
                time.sleep(0.5)
            fields["elapsed"] = round(time.monotonic() - started, 3)
            self.record(**fields)

    def fire(self, rng: random.Random) -> None:
        n = 0
        while self.running():
            n += 1
            kind = rng.choice(self.kinds)
            job_id = f"f-{kind}-{self.seed}-{n}"
            definition = _definition(kind)
            self._enqueue(job_id, definition.using(job_id=job_id).enqueue, n)
            time.sleep(rng.uniform(0.05, 0.3))

    def groups(self, rng: random.Random) -> None:
        seqs = dict.fromkeys(GROUPS, 0)
        while self.running():
            grp = rng.choice(GROUPS)
            seq = seqs[grp]
            job_id = f"g-{grp}-{self.seed}-{seq}"
            call = jobs.grouped.using(job_id=job_id, group=f"chaos:{grp}")
            if self._enqueue(job_id, call.enqueue, grp, seq):
                seqs[grp] = seq + 1
            time.sleep(rng.uniform(0.1, 0.5))

    def workflows(self, rng: random.Random) -> None:
        """``chain(step 0, group(step 1, step 2), step 3)`` (a diamond) in a batch whose
        ``on_complete`` is ``chaos.callback``; one line per workflow with its batch and jobs
        once the batch is sealed (the ``with`` block exited)."""
        try:
            from django_jobqueue import batch, chain, group
        except ImportError:
            return  # a package without workflows: the checker says so
        n = 0
        while self.running():
            n += 1
            try:
                with batch(on_complete=jobs.callback.bind(n), name=f"chaos-{self.seed}-{n}") as b:
                    steps = [jobs.step.bind(n, index) for index in range(4)]
                    handles = chain(steps[0], group(steps[1], steps[2]), steps[3]).enqueue()
            except Exception as exc:
                self.record(call="workflow", n=n, outcome="error", error=repr(exc)[:200])
                connection.close()
                time.sleep(0.5)
                continue
            self.record(
                call="workflow", n=n, outcome="ok", batch=b.id, jobs=[h.id for h in handles]
            )
            time.sleep(rng.uniform(0.3, 1.0))

    def run(self) -> None:
        threads = [
            threading.Thread(target=self.waiters, args=(i, random.Random(self.seed * 10 + i)))
            for i in range(2)
        ]
        threads.append(threading.Thread(target=self.fire, args=(random.Random(self.seed + 7),)))
        threads.append(threading.Thread(target=self.groups, args=(random.Random(self.seed + 11),)))
        threads.append(
            threading.Thread(target=self.workflows, args=(random.Random(self.seed + 13),))
        )
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.record(call="done")


if __name__ == "__main__":
    Producer(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])).run()
