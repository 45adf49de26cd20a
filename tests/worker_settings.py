"""Settings of worker subprocesses started by the tests: the parent's test database."""

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES["default"]["NAME"] = os.environ["DJQ_TEST_DB"]
