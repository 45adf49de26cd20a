"""Settings of every chaos process (workers, producers, the checker).

The database and Redis are reached at ``CHAOS_SERVICES_HOST`` (the host side of the
process's network namespace's link, where a forwarder passes the bytes to 127.0.0.1), so a
partition or a delay on that link is one the process really sees.
"""

import os

SECRET_KEY = "chaos-not-secret"
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "channels",
    "django_jobqueue",
    "tests.chaos",
]
_HOST = os.environ.get("CHAOS_SERVICES_HOST", "127.0.0.1")
LEASE_SECONDS = float(os.environ.get("CHAOS_LEASE_SECONDS", "4"))

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("CHAOS_DB_NAME", "djq_chaos"),
        "USER": "postgres",
        "HOST": _HOST,
        # scripts/chaos --pgbouncer: 6432, PgBouncer in transaction pooling mode.
        "PORT": int(os.environ.get("CHAOS_DB_PORT", "5432")),
        "DISABLE_SERVER_SIDE_CURSORS": os.environ.get("CHAOS_DB_PORT", "5432") != "5432",
        # What an operator should set too (docs/guide/chaos.md): a connection attempt to an
        # unreachable database gives up in seconds, and a connection whose peer went silent
        # (a partition) is declared dead by TCP keepalives and the user timeout in about
        # 10 s, instead of the kernel's default of about 15 minutes of retransmissions.
        "OPTIONS": {
            "connect_timeout": 3,
            "keepalives": 1,
            "keepalives_idle": 3,
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": 8000,
        },
        "CONN_MAX_AGE": None,
        "CONN_HEALTH_CHECKS": True,  # a connection a partition broke is replaced, not reused
    }
}
_REDIS = {
    "hosts": [
        {"address": f"redis://{_HOST}:6379/0", "socket_connect_timeout": 2, "socket_timeout": 10}
    ]
}
CHANNEL_LAYERS = {
    "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": _REDIS},
}
JOBQUEUE = {
    "LEASE_SECONDS": LEASE_SECONDS,
    "POLL_INTERVAL": 0.5,
    "MAX_ATTEMPTS": 50,  # faults, not the jobs, fail attempts: none may end in a dead letter
    "RESULT_TTL": 24 * 3600,  # the checker reads every result at the end
    "WAIT_TIMEOUT": 10,
    "LIMITS": {"chaos-limit": {"concurrency": 2}},
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"django_jobqueue": {"level": "INFO"}},
}
