"""Test settings. DATABASE_URL picks PostgreSQL (postgres://...) over the SQLite default;
REDIS_URL picks channels_redis over the in-memory channel layer. Django's Tasks framework
(Django 6, or the django-tasks backport on Django 5.2) runs on JobQueueBackend when present."""

import importlib.util
import os
import tempfile
from pathlib import Path

import dj_database_url

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "/static/"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_jobqueue",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
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

DATABASE_URL = os.environ.get("DATABASE_URL", "")


def _postgres_defaults(parsed: dict) -> dict:
    """A parsed postgres:// URL, with what it leaves out filled in (user, host, port, name)."""
    return {
        **parsed,
        "NAME": parsed["NAME"] or "postgres",
        "USER": parsed["USER"] or "postgres",
        "HOST": parsed["HOST"] or "127.0.0.1",
        "PORT": str(parsed["PORT"] or 5432),
    }


if DATABASE_URL.startswith(("postgres://", "postgresql://")):
    DATABASES = {
        "default": {
            **_postgres_defaults(dj_database_url.parse(DATABASE_URL)),
            "TEST": {"NAME": os.environ.get("DJQ_TEST_DB_NAME", "test_django_jobqueue")},
            # DJQ_PGBOUNCER=1: DATABASE_URL is PgBouncer in transaction pooling mode
            # (scripts/test-pgbouncer), where Django needs server-side cursors off.
            "DISABLE_SERVER_SIDE_CURSORS": os.environ.get("DJQ_PGBOUNCER") == "1",
        }
    }
    # A database of its own for the queue (tests/test_owndb.py): a second test database.
    DATABASES["queue"] = {
        **DATABASES["default"],
        "TEST": {"NAME": DATABASES["default"]["TEST"]["NAME"] + "_queue"},
    }
else:
    _dir = Path(os.environ.get("DJQ_SQLITE_DIR", tempfile.gettempdir()))
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(_dir / "djq-tests.sqlite3"),
            "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;", "timeout": 20},
            # A file, so that worker subprocesses open the same test database.
            "TEST": {"NAME": str(_dir / f"djq-test-{os.getpid()}.sqlite3")},
        }
    }
    # A database of its own for the queue (tests/test_owndb.py): a second file.
    DATABASES["queue"] = {
        **DATABASES["default"],
        "NAME": str(_dir / "djq-tests-queue.sqlite3"),
        "TEST": {"NAME": str(_dir / f"djq-test-queue-{os.getpid()}.sqlite3")},
    }

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    _REDIS_CONFIG = {
        # Longer than channels_redis's 5 s blocking receive (redis-py 8 defaults to 5 s).
        "hosts": [{"address": REDIS_URL, "socket_timeout": 10}],
        # Shared with the worker subprocesses of this test run, apart from other runs.
        "prefix": os.environ.setdefault("DJQ_REDIS_PREFIX", f"djqtest{os.getpid()}:"),
    }
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": _REDIS_CONFIG},
        # JOBQUEUE["CHANNEL_LAYER"] = "pubsub" in the tests of the broadcast layer.
        "pubsub": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": _REDIS_CONFIG,
        },
        # Through Redis Sentinel (scripts/services --sentinel), in tests/test_sentinel.py.
        "sentinel": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "sentinels": [("127.0.0.1", 26379)],
                        "master_name": "djq",
                        "socket_timeout": 10,
                        "sentinel_kwargs": {"socket_timeout": 2},
                    }
                ],
                "prefix": _REDIS_CONFIG["prefix"],
            },
        },
    }
    # JOBQUEUE["LIMITS_CACHE"] = "limits" in the tests of limits held in Redis.
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "limits": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": _REDIS_CONFIG["prefix"],
        },
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# No opinion until a test sets JOBQUEUE["DATABASE"] = "queue" (tests/test_owndb.py): both
# test databases get every table, and the queue lives on "default".
DATABASE_ROUTERS = ["django_jobqueue.routers.QueueRouter"]

JOBQUEUE = {
    "LEASE_SECONDS": 2,
    "POLL_INTERVAL": 0.1,
    "RETRY_BACKOFF": 0.05,
    "RETRY_BACKOFF_MAX": 0.2,
}
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

# DJQ_QUEUE_DATABASE=queue: the whole run keeps the queue on its own database (conftest.py
# lets every database test use both).
if os.environ.get("DJQ_QUEUE_DATABASE"):
    JOBQUEUE["DATABASE"] = os.environ["DJQ_QUEUE_DATABASE"]

SILENCED_SYSTEM_CHECKS = ["django_jobqueue.W001"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_jobqueue": {"handlers": ["console"], "level": "INFO"},
        # Its INFO line "... channels over capacity in group ..." is a dropped notification.
        "channels_redis": {"handlers": ["console"], "level": "INFO"},
    },
}
