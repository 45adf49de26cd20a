"""Settings of worker subprocesses started by the tests: the parent's test database."""

import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, JOBQUEUE

DATABASES["default"]["NAME"] = os.environ["DJQ_TEST_DB"]
# The queue's own test database (JOBQUEUE["DATABASE"] = "queue", tests/test_owndb.py).
DATABASES["queue"]["NAME"] = os.environ.get("DJQ_TEST_QUEUE_DB", DATABASES["queue"]["NAME"])
# A test can change the worker's JOBQUEUE settings: DJQ_JOBQUEUE='{"POLL_INTERVAL": 30}'.
JOBQUEUE = {**JOBQUEUE, **json.loads(os.environ.get("DJQ_JOBQUEUE", "{}"))}
