"""Tasks of Django's Tasks framework used by the tests (autodiscovered: TASKS names
JobQueueBackend). Only imported where the framework is installed."""

import asyncio
import os
from pathlib import Path

import django

if django.VERSION >= (6, 0):
    from django.tasks import task
else:
    from django_tasks import task

from tests.testapp.models import Execution


@task
def add_task(x, y):
    return x + y


@task
async def async_add_task(x, y):
    await asyncio.sleep(0)
    return x + y


@task(priority=10, queue_name="emails")
def send_mail_task(to):
    return f"sent to {to}"


@task(takes_context=True)
def context_task(context, counter_path=""):
    """Fails its first attempt when given a counter file, then reports what its context says."""
    if counter_path:
        path = Path(counter_path)
        seen = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(seen))
        if seen == 1:
            raise ConnectionError("first attempt fails")
    result = context.task_result
    return {
        "attempt": context.attempt,
        "id": result.id,
        "status": str(result.status),
        "worker_ids": list(result.worker_ids),
        "errors": [error.exception_class_path for error in result.errors],
    }


@task
def failing_task(message="boom"):
    raise ValueError(message)


@task
def record_task(tag):
    Execution.objects.create(tag=tag, pid=os.getpid())
    return tag


@task
def non_json_result_task():
    return {"when": {1, 2}}  # a set: not JSON


@task
def gated_task(gate):
    """Block until the test opens the gate (tests.testapp.jobs.GATES)."""
    from tests.testapp.jobs import GATES

    GATES[gate].wait()
    return gate
