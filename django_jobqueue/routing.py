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

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path, re_path

from .console import AdminLiveConsumer
from .consumers import JobWatchConsumer

websocket_urlpatterns = [
    path("ws/jobqueue/jobs/<str:token>/", JobWatchConsumer.as_asgi(), name="jobqueue-watch"),
    # No token (or an empty one): accepted and closed with 4403, like a bad token.
    re_path(r"^ws/jobqueue/jobs/?$", JobWatchConsumer.as_asgi()),
    path(
        "ws/jobqueue/admin/",
        AllowedHostsOriginValidator(AuthMiddlewareStack(AdminLiveConsumer.as_asgi())),
        name="jobqueue-admin-live",
    ),
]

__all__ = ["websocket_urlpatterns"]
