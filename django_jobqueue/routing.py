"""WebSocket routes: include them in your ASGI application's ``URLRouter``.

.. code-block:: python

    from django_jobqueue.routing import websocket_urlpatterns

    application = ProtocolTypeRouter({
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    })

``ws/jobqueue/jobs/<token>/`` streams the job named by a watch token
(``handle.watch_token()``); see :mod:`django_jobqueue.consumers` for the messages and close
codes.
"""

from __future__ import annotations

from django.urls import path, re_path

from .consumers import JobWatchConsumer

websocket_urlpatterns = [
    path("ws/jobqueue/jobs/<str:token>/", JobWatchConsumer.as_asgi(), name="jobqueue-watch"),
    # No token (or an empty one): accepted and closed with 4403, like a bad token.
    re_path(r"^ws/jobqueue/jobs/?$", JobWatchConsumer.as_asgi()),
]

__all__ = ["websocket_urlpatterns"]
