"""Settings of the example project.

SQLite and polling by default, so ``./scripts/example`` needs no server. Set ``DATABASE_URL``
(``postgres://user:password@host:5432/name`` or ``sqlite:////absolute/path.sqlite3``) and
``REDIS_URL`` (``redis://host:6379/0``) to run it on PostgreSQL and Redis, as in production.
"""

import importlib.util
import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("SECRET_KEY", "example-project-not-secret")
DEBUG = os.environ.get("DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    # First: its runserver serves the ASGI application below (HTTP and the WebSockets of the
    # live progress bar), with Django's autoreloader and static files as usual.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_jobqueue",
    "example_project.shop",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"
ASGI_APPLICATION = "example_project.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# -- database: DATABASE_URL, SQLite by default ---------------------------------------------------

DATABASE_URL = os.environ.get("DATABASE_URL", "") or "sqlite:///db.sqlite3"
_db = dj_database_url.parse(DATABASE_URL)
if _db["ENGINE"] == "django.db.backends.postgresql":
    DATABASES = {
        "default": {
            **_db,
            "NAME": _db["NAME"] or "postgres",
            "USER": _db["USER"] or "postgres",
            "HOST": _db["HOST"] or "127.0.0.1",
            "PORT": str(_db["PORT"] or 5432),
        }
    }
elif _db["ENGINE"] == "django.db.backends.sqlite3":
    # sqlite:///relative/to/this/directory.sqlite3 or sqlite:////an/absolute/path.sqlite3
    DATABASES = {
        "default": {
            **_db,
            "NAME": BASE_DIR / (_db["NAME"] or "db.sqlite3"),  # an absolute name replaces BASE_DIR
            # WAL: the web server reads while the worker writes. timeout: wait for the
            # write lock instead of failing with "database is locked".
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL;",
                "timeout": 20,
                **_db.get("OPTIONS", {}),
            },
        }
    }
else:
    raise ValueError(f"DATABASE_URL must be postgres://... or sqlite:///..., not {DATABASE_URL!r}")

# -- notifications: Redis if REDIS_URL, else polling ----------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # Longer than channels_redis's 5 s blocking receive (check django_jobqueue.W002).
                "hosts": [{"address": REDIS_URL, "socket_timeout": 10}],
                "prefix": os.environ.get("REDIS_PREFIX", "djq-example"),
            },
        }
    }

JOBQUEUE = {
    # Without Redis the web server and the worker find out about each other's work by
    # polling the database; half a second keeps the demo snappy. The live progress bar
    # works the same: with no channel layer, the server's WebSocket consumer reads the
    # watched jobs every POLL_INTERVAL (one query for all of them); with Redis it reads
    # a job when its worker says it changed.
    "CHANNEL_LAYER": "default" if REDIS_URL else None,
    "POLL_INTERVAL": 0.5,
    "WAIT_TIMEOUT": 10,
    "RETRY_BACKOFF": 1.0,  # the flaky job's retries come after about 1 s, then 2 s
    "RETRY_BACKOFF_MAX": 30.0,
    # Leases renewed every 2 s: without Redis a worker hears of a cancel at its next renewal.
    "HEARTBEAT_INTERVAL": 2.0,
    # The partner's API takes one call at a time, across every worker (shop.jobs.call_partner).
    "LIMITS": {"partner-api": {"concurrency": 1}},
}

# Django's Tasks framework on the same queue (shop/tasks.py): django.tasks on Django 6, the
# django-tasks backport on Django 5.2 when it is installed.
import django  # noqa: E402

if django.VERSION >= (6, 0) or importlib.util.find_spec("django_tasks") is not None:
    if django.VERSION < (6, 0):
        INSTALLED_APPS.append("django_tasks")
    TASKS = {
        "default": {
            "BACKEND": "django_jobqueue.backend.JobQueueBackend",
            "QUEUES": ["default", "emails"],
        }
    }

# The welcome emails are printed by the worker instead of sent.
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = "shop@example.com"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"short": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "short"}},
    "loggers": {"django_jobqueue": {"handlers": ["console"], "level": "INFO"}},
}
