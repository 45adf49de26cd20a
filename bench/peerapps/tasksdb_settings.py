"""Django settings for django-tasks-db in the side-by-side benchmark (``bench/peers.py``)."""

import os
from urllib.parse import urlparse

_url = urlparse(
    os.environ.get("PEERS_PG_URL", "postgres://postgres@127.0.0.1:5432/djq_peers_tasksdb")
)

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django_tasks_db", "bench.peerapps.tasksdbapp"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": _url.username or "postgres",
        "HOST": _url.hostname or "127.0.0.1",
        "PORT": str(_url.port or 5432),
    }
}
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
