"""``runjobworker --processes N``, ``--max-jobs``, ``--max-memory``: real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from django_jobqueue.models import Job
from django_jobqueue.worker.supervisor import describe_exit, restart_delay
from tests.conftest import free_port, wait_until
from tests.testapp.jobs import add, hold_memory, record, sleep_then_record
from tests.testapp.models import Execution

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]

#: One job claimed at a time per process, so that work spreads over the processes.
SPREAD = {"DJQ_JOBQUEUE": json.dumps({"PREFETCH": 0, "LEASE_SECONDS": 2})}
STARTED = re.compile(r"worker process (\d+) started: pid=(\d+)")


def _children(log: str) -> list[int]:
    """The pids of the worker processes the supervisor started, in order."""
    return [int(pid) for _, pid in STARTED.findall(log)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    status = Path(f"/proc/{pid}/stat")
    return not status.exists() or status.read_text().split(") ")[1][0] != "Z"


def _supervise(worker_processes, *args: str):
    proc = worker_processes.start("--processes", "2", "--concurrency", "1", *args, env=SPREAD)
    wait_until(lambda: len(_children(worker_processes.log(proc))) >= 2, timeout=30)
    return proc


def test_two_processes_drain_and_sigterm_finishes_their_jobs_then_exits_0(
    worker_processes, tmp_path
):
    markers = [tmp_path / f"started-{n}" for n in range(2)]
    handles = [sleep_then_record.enqueue(f"drain-{n}", 1.5, str(m)) for n, m in enumerate(markers)]
    proc = _supervise(worker_processes)
    children = _children(worker_processes.log(proc))
    wait_until(lambda: all(m.exists() for m in markers), timeout=30)
    # Both jobs run at once, one in each worker process.
    assert {int(m.read_text()) for m in markers} == set(children)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, worker_processes.log(proc)
    assert {Job.objects.get(job_id=h.id).status for h in handles} == {"completed"}
    assert Execution.objects.filter(tag__startswith="drain-").count() == 2
    log = worker_processes.log(proc)
    assert "got SIGTERM: draining 2 worker process(es)" in log
    assert not any(_alive(pid) for pid in children)


def test_a_killed_worker_process_is_replaced_with_a_growing_delay_and_the_queue_drains(
    worker_processes, tmp_path
):
    marker = tmp_path / "started"
    long = sleep_then_record.enqueue("killed", 30, str(marker))
    proc = _supervise(worker_processes)
    wait_until(marker.exists, timeout=30)
    victim = int(marker.read_text())
    os.kill(victim, signal.SIGKILL)
    log = lambda: worker_processes.log(proc)  # noqa: E731
    wait_until(lambda: f"(pid {victim}) was killed by SIGKILL" in log(), timeout=30)
    wait_until(lambda: len(_children(log())) == 3, timeout=30)
    assert "(1 failure(s) in a row): starting a new one in 0 s" in log()
    # Killed again at once: the second failure in a row waits 1 s, the third 2 s.
    for failures, delay in ((2, 1), (3, 2)):
        replacement = _children(log())[-1]
        os.kill(replacement, signal.SIGKILL)
        line = f"({failures} failure(s) in a row): starting a new one in {delay} s"
        wait_until(lambda line=line: line in log(), timeout=30)
        wait_until(lambda n=2 + failures: len(_children(log())) == n, timeout=30)
    # The killed job runs again (quick this time) once its lease expires; new work drains.
    Job.objects.filter(job_id=long.id).update(args=["killed", 0, ""])
    handles = [record.enqueue(f"after-{n}") for n in range(6)]
    wait_until(
        lambda: all(Job.objects.get(job_id=h.id).status == "completed" for h in [long, *handles]),
        timeout=60,
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log()


def test_max_jobs_replaces_a_worker_process_after_n_jobs(worker_processes):
    handles = [record.enqueue(f"recycled-{n}") for n in range(12)]
    proc = _supervise(worker_processes, "--max-jobs", "3")
    wait_until(lambda: Execution.objects.filter(tag__startswith="recycled-").count() == 12, 60)
    wait_until(lambda: all(Job.objects.get(job_id=h.id).status == "completed" for h in handles), 30)
    per_pid: dict[int, int] = {}
    for pid in Execution.objects.values_list("pid", flat=True):
        per_pid[pid] = per_pid.get(pid, 0) + 1
    # Each process drains after its third job (one slot, no prefetch: a fourth only if its
    # claim raced the third's outcome), so 12 jobs took at least 3 processes, usually 4.
    assert len(per_pid) >= 3 and max(per_pid.values()) <= 4, per_pid
    log = worker_processes.log(proc)
    assert "recycling: it finished 3 jobs (--max-jobs 3)" in log
    assert re.search(r"worker process \d \(pid \d+\) exited with status 0 after .* a fresh", log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, worker_processes.log(proc)


def test_a_worker_past_max_jobs_hands_back_what_it_prefetched(run_worker):
    """In process: prefetched jobs go back to the queue unrun when the worker recycles."""
    from django_jobqueue.worker.recycling import Recycling

    handles = [record.enqueue(f"prefetched-{n}") for n in range(6)]
    worker = run_worker(concurrency=1, burst=False, recycling=Recycling(max_jobs=2))
    assert worker.exit_code == 0 and worker.processed in (2, 3)  # +1: a slot refilled
    rows = [Job.objects.get(job_id=h.id) for h in handles]
    assert sum(row.status == "completed" for row in rows) == worker.processed
    assert all(row.attempts == 0 for row in rows if row.status == "queued")


def test_max_jobs_in_a_single_process_drains_and_exits_0(worker_processes):
    handles = [record.enqueue(f"single-{n}") for n in range(3)]
    proc = worker_processes.start("--concurrency", "1", "--max-jobs", "2", env=SPREAD)
    assert proc.wait(30) == 0, worker_processes.log(proc)
    assert "recycling: it finished 2 jobs (--max-jobs 2)" in worker_processes.log(proc)
    assert sorted(Job.objects.get(job_id=h.id).status for h in handles) == [
        "completed",
        "completed",
        "queued",
    ]


def test_max_memory_recycles_a_process_past_its_size(worker_processes):
    """A job that leaks 200 MB takes the worker past a limit 50 MB above this test
    process's size (larger than a worker's at start): it drains and exits 0."""
    from django_jobqueue.worker.recycling import MB, rss_bytes

    limit = rss_bytes() // MB + 50
    small, leak = add.enqueue(1, 2), hold_memory.enqueue(200)
    proc = worker_processes.start("--concurrency", "1", "--max-memory", str(limit), env=SPREAD)
    assert proc.wait(30) == 0, worker_processes.log(proc)
    assert {Job.objects.get(job_id=h.id).status for h in (small, leak)} == {"completed"}
    assert re.search(
        rf"resident memory is \d+ MB \(--max-memory {limit}\)", worker_processes.log(proc)
    )


@pytest.mark.parametrize("supervised", [False, True], ids=["single", "processes"])
def test_a_second_signal_stops_at_once_and_exits_1(worker_processes, tmp_path, supervised):
    marker = tmp_path / "started"
    handle = sleep_then_record.enqueue("interrupted", 60, str(marker))
    args = ("--processes", "2") if supervised else ()
    proc = worker_processes.start("--concurrency", "1", *args, env=SPREAD)
    wait_until(marker.exists, timeout=30)
    child = int(marker.read_text())
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "got SIGTERM" in worker_processes.log(proc), timeout=10)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 1, worker_processes.log(proc)
    assert "got SIGTERM again" in worker_processes.log(proc)
    wait_until(lambda: not _alive(child), timeout=10)
    assert Execution.objects.filter(tag="interrupted").count() == 0
    assert Job.objects.get(job_id=handle.id).status == "running"  # runs again after its lease


def test_burst_supervisor_exits_0_once_every_process_found_nothing_to_do(worker_processes):
    handles = [record.enqueue(f"burst-{n}") for n in range(6)]
    proc = worker_processes.start("--processes", "2", "--burst", env=SPREAD)
    assert proc.wait(60) == 0, worker_processes.log(proc)
    assert {Job.objects.get(job_id=h.id).status for h in handles} == {"completed"}
    assert worker_processes.log(proc).count("nothing left to do (--burst)") == 2


def test_worker_processes_of_a_killed_supervisor_drain_and_exit(worker_processes, tmp_path):
    marker = tmp_path / "started"
    handle = sleep_then_record.enqueue("orphan", 1.5, str(marker))
    proc = _supervise(worker_processes)
    children = _children(worker_processes.log(proc))
    wait_until(marker.exists, timeout=30)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    log = lambda: worker_processes.log(proc)  # noqa: E731
    wait_until(lambda: log().count("is gone: draining") == 2, timeout=10)
    wait_until(lambda: not any(_alive(pid) for pid in children), timeout=30)
    assert Job.objects.get(job_id=handle.id).status == "completed"  # finished, not abandoned


def test_the_worker_processes_metrics_are_one_scrape(worker_processes):
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    handles = [add.enqueue(n, n) for n in range(6)]
    proc = _supervise(worker_processes, "--metrics-port", str(port))
    wait_until(lambda: all(Job.objects.get(job_id=h.id).status == "completed" for h in handles), 30)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        text = response.read().decode()
    finished = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "jobqueue_jobs_finished_total"
    ]
    assert sum(sample.value for sample in finished) == 6, text
    children = _children(worker_processes.log(proc))
    environ = Path(f"/proc/{children[0]}/environ").read_bytes().split(b"\0")
    directory = next(v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
    directory = Path(os.fsdecode(directory.split(b"=", 1)[1]))
    assert directory.is_dir()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, worker_processes.log(proc)
    assert not directory.exists()  # the supervisor's own: removed on the way out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--processes", "0"], "--processes: must be 1 or more, not 0"),
        (["--processes", "-2"], "--processes: must be 1 or more, not -2"),
        (["--max-jobs", "0"], "--max-jobs: must be 1 or more, not 0"),
        (["--max-memory", "-1"], "--max-memory: must be 1 or more, not -1"),
        (["--processes", "two"], "'two' is not a whole number"),
        (["--max-memory", "1"], "--max-memory 1 is below this process's own size at start"),
        (["--processes", "2", "--reload"], "--reload and --processes do not go together"),
        (["--processes", "2"], "--processes starts each worker process with this process's"),
    ],
)
def test_bad_arguments_are_refused_and_nothing_runs(args, message):
    handle = add.enqueue(1, 1)
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("runjobworker", *args)
    assert Job.objects.get(job_id=handle.id).status == "queued"


def test_restart_delay_grows_to_a_minute():
    assert [restart_delay(n) for n in range(1, 10)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]


def test_exits_are_described_with_their_status_or_signal():
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(-9) == "was killed by SIGKILL"
