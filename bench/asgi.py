"""The ASGI application of the ``watchers`` scenario: django-jobqueue's WebSocket routes only
(``python -m daphne bench.asgi:application``, with ``DJANGO_SETTINGS_MODULE=bench.settings``)."""

import django

django.setup()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from django_jobqueue.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter({"websocket": URLRouter(websocket_urlpatterns)})
