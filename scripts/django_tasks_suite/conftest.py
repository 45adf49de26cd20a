"""pytest plugin for Django's tests/tasks suite on JobQueueBackend: the adapter, database
access for the suite's SimpleTestCases (this backend stores tasks), and the tests that do
not apply to a queued third-party backend (NOT_APPLICABLE, one reason each)."""

from __future__ import annotations

import pytest
from django.test import SimpleTestCase, TransactionTestCase

from scripts.django_tasks_suite.adapter import install

install()

_BUILTIN = "asserts the backend is Django's own class (isinstance ImmediateBackend/DummyBackend)"
_SYNC_IN_ASYNC = (
    "calls the synchronous get_result() or refresh() inside an async test: a "
    "database-backed backend must be awaited there (aget_result), as Django's ORM requires"
)
_IN_MEMORY = (
    "mutates DummyBackend's in-memory result and expects refresh() to read it back; here "
    "results live in the database"
)
_UNSUPPORTED = "expects NotImplementedError from a backend without get_result; this one has it"

#: Upstream tests that do not apply to a queued third-party backend, and why.
NOT_APPLICABLE = {
    "test_immediate_backend.py::ImmediateBackendTestCase::test_using_correct_backend": _BUILTIN,
    "test_dummy_backend.py::DummyBackendTestCase::test_using_correct_backend": _BUILTIN,
    "test_tasks.py::TaskTestCase::test_using_correct_backend": _BUILTIN,
    "test_tasks.py::TaskTestCase::test_get_backend": _BUILTIN,
    "test_tasks.py::TaskTestCase::test_get_missing_result": _SYNC_IN_ASYNC,
    "test_tasks.py::TaskTestCase::test_refresh_result": _SYNC_IN_ASYNC,
    "test_dummy_backend.py::DummyBackendTestCase::test_get_missing_result": _SYNC_IN_ASYNC,
    "test_dummy_backend.py::DummyBackendTestCase::test_refresh_result": _IN_MEMORY,
    "test_dummy_backend.py::DummyBackendTestCase::test_refresh_result_async": _IN_MEMORY,
    "test_immediate_backend.py::ImmediateBackendTestCase::test_cannot_get_result": _UNSUPPORTED,
    "test_immediate_backend.py::ImmediateBackendTestCase::test_cannot_refresh_result": (
        _UNSUPPORTED
    ),
    "test_dummy_backend.py::DummyBackendTestCase::test_validate_disallowed_async_task": (
        "this backend supports async tasks (supports_async_task is True)"
    ),
    "test_immediate_backend.py::ImmediateBackendTestCase::test_cannot_pass_run_after": (
        "this backend supports run_after (supports_defer is True)"
    ),
    "test_immediate_backend.py::ImmediateBackendTestCase::test_throws_keyboard_interrupt": (
        "on a worker, a KeyboardInterrupt raised by a task is that task's failure, not the caller's"
    ),
    "test_custom_backend.py": "tests backend classes defined by the suite, not a backend",
    "test_immediate_backend.py::ImmediateBackendTransactionTestCase::"
    "test_doesnt_wait_until_transaction_commit_by_default": (
        "a task enqueued in transaction.atomic() runs only once it commits (committed means "
        "durable): no worker can see it before"
    ),
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        node = item.nodeid.split("tasks/", 1)[-1]
        reason = NOT_APPLICABLE.get(node) or NOT_APPLICABLE.get(node.split("::")[0])
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"not applicable: {reason}"))
        cls = getattr(item, "cls", None)
        if cls is not None and issubclass(cls, SimpleTestCase) and not cls.databases:
            cls.databases = {"default"}  # this backend keeps tasks in the database
        if cls is not None and issubclass(cls, TransactionTestCase) and cls.available_apps == []:
            cls.available_apps = None  # ...in the models of its app
