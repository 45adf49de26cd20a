"""WebSocket routes: include them in your ASGI application's ``URLRouter``.

.. code-block:: python

    from django_jobqueue.routing import websocket_urlpatterns

    application = ProtocolTypeRouter({
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    })

``ws/jobqueue/jobs/<token>/`` streams the job named by a watch token
(``handle.watch_token()``); see :mod:`django_jobqueue.consumers` for the messages and close
codes. ``ws/jobqueue/admin/`` tells a staff user's admin page which of its jobs changed (the
session's user, from this origin only: see :mod:`django_jobqueue.console`).
"""

from __future__ import annotations

from typing import Any

from channels.security.websocket import AllowedHostsOriginValidator
from django.apps import apps
from django.urls import URLPattern, path, re_path

from .console import AdminLiveConsumer
from .consumers import JobWatchConsumer


def _admin_routes() -> list[URLPattern]:
    """``ws/jobqueue/admin/``, where the admin's sessions and users are (Channels' auth
    needs ``django.contrib.auth`` and ``django.contrib.sessions``)."""
    if not (
        apps.is_installed("django.contrib.auth") and apps.is_installed("django.contrib.sessions")
    ):
        return []
    from channels.auth import AuthMiddlewareStack

    consumer: Any = AllowedHostsOriginValidator(AuthMiddlewareStack(AdminLiveConsumer.as_asgi()))
    return [path("ws/jobqueue/admin/", consumer, name="jobqueue-admin-live")]


websocket_urlpatterns = [
    path("ws/jobqueue/jobs/<str:token>/", JobWatchConsumer.as_asgi(), name="jobqueue-watch"),
    # No token (or an empty one): accepted and closed with 4403, like a bad token.
    re_path(r"^ws/jobqueue/jobs/?$", JobWatchConsumer.as_asgi()),
    *_admin_routes(),
]

__all__ = ["websocket_urlpatterns"]
