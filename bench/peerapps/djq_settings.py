"""``bench/settings.py`` (PostgreSQL + Redis) plus the side-by-side benchmark's job app."""

from bench.settings import *  # noqa: F403
from bench.settings import INSTALLED_APPS as _APPS

INSTALLED_APPS = [*_APPS, "bench.peerapps.djqapp"]
