"""``bench/settings.py`` with the admin installed, for ``bench/search_plan.py``."""

from bench.settings import *  # noqa: F403

INSTALLED_APPS = [
    *INSTALLED_APPS,  # noqa: F405
    "django.contrib.admin",
    "django.contrib.messages",
    "django.contrib.sessions",
]
