"""Django settings for the benchmarks (``bench/run.py`` sets the environment).

Environment:

* ``BENCH_DB``: ``postgres`` (default) or ``sqlite``.
* ``DATABASE_URL``: with ``postgres``, default ``postgres://postgres@127.0.0.1:5432/djq_bench``.
* ``BENCH_SQLITE_DIR``: with ``sqlite``, the directory of the database file (default: a
  ``djq_bench`` directory in the system temp dir). Worker subprocesses must see the same one.
* ``BENCH_CHANNELS``: ``redis`` (default with PostgreSQL) or ``polling`` (default with SQLite:
  ``JOBQUEUE["CHANNEL_LAYER"] = None``).
* ``BENCH_CHANNEL_LAYER``: with ``redis``, the alias ``JOBQUEUE`` uses: ``default``
  (``RedisChannelLayer``) or ``pubsub`` (``RedisPubSubChannelLayer``, same Redis and prefix).
* ``REDIS_URL``: default ``redis://127.0.0.1:6379/0``; ``BENCH_REDIS_PREFIX`` namespaces the keys
  of one run so stale notifications of an earlier run are never received.
* ``BENCH_POLL_INTERVAL``: ``JOBQUEUE["POLL_INTERVAL"]``; default 1.0 with Redis (the
  library's default), 0.05 with polling.
"""

import json
import os
import tempfile
from pathlib import Path

import dj_database_url

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = None

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_jobqueue",
    "bench.benchapp",
]

BENCH_DB = os.environ.get("BENCH_DB", "postgres")

if BENCH_DB == "postgres":
    _parsed = dj_database_url.parse(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/djq_bench")
    )
    DATABASES = {
        "default": {
            **_parsed,
            "NAME": _parsed["NAME"] or "djq_bench",
            "USER": _parsed["USER"] or "postgres",
            "HOST": _parsed["HOST"] or "127.0.0.1",
            "PORT": str(_parsed["PORT"] or 5432),
        }
    }
    # The round-trip floor scenario plays the worker on a second connection.
    DATABASES["worker"] = dict(DATABASES["default"])
elif BENCH_DB == "sqlite":
    _dir = Path(os.environ.get("BENCH_SQLITE_DIR") or Path(tempfile.gettempdir()) / "djq_bench")
    _dir.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(_dir / "djq_bench.sqlite3"),
            "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;", "timeout": 20},
        }
    }
else:
    raise RuntimeError(f"BENCH_DB must be 'postgres' or 'sqlite', not {BENCH_DB!r}")

BENCH_CHANNELS = os.environ.get("BENCH_CHANNELS") or (
    "redis" if BENCH_DB == "postgres" else "polling"
)
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

if BENCH_CHANNELS == "redis":
    _REDIS_CONFIG = {
        # Longer than channels_redis's 5 s blocking receive, as the docs say (W002):
        # redis-py 8's default of 5 s would time an idle receive out.
        "hosts": [{"address": REDIS_URL, "socket_timeout": 10}],
        "prefix": os.environ.get("BENCH_REDIS_PREFIX", "djqbench:"),
        # A web process's hub receives every watched job's messages on one channel: room for
        # a burst of one message per job (channels_redis drops what is over capacity).
        "capacity": int(os.environ.get("BENCH_CHANNEL_CAPACITY") or 5000),
    }
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": _REDIS_CONFIG},
        "pubsub": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": _REDIS_CONFIG,
        },
    }
    # The round-trip and wake-up scenarios measure both layers (bench/run.py sets this).
    _channel_layer = os.environ.get("BENCH_CHANNEL_LAYER", "default")
    _poll = 1.0
elif BENCH_CHANNELS == "polling":
    CHANNEL_LAYERS = {}
    _channel_layer = None
    _poll = 0.05
else:
    raise RuntimeError(f"BENCH_CHANNELS must be 'redis' or 'polling', not {BENCH_CHANNELS!r}")

if BENCH_CHANNELS == "redis":
    # The limits scenario holds its limits in Redis through this cache (BENCH_LIMITS_CACHE).
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "limits": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": _REDIS_CONFIG["prefix"],
        },
    }

JOBQUEUE = {
    "CHANNEL_LAYER": _channel_layer,
    "POLL_INTERVAL": float(os.environ.get("BENCH_POLL_INTERVAL") or _poll),
    # The limits scenario (bench/run.py sets these for its workers).
    "LIMITS": json.loads(os.environ.get("BENCH_LIMITS") or "{}"),
    "LIMITS_CACHE": os.environ.get("BENCH_LIMITS_CACHE") or None,
}

# Per-job INFO lines would cost more than a no-op job: warnings only.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_jobqueue": {"handlers": ["console"], "level": "WARNING"}},
}
