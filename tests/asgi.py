"""The tests' ASGI application, for real daphne and uvicorn servers the tests start
(``tests/test_watch_servers.py``): Django for HTTP, the watch consumer for WebSockets, on the
test database (``tests.worker_settings``)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.worker_settings")
django_asgi_app = get_asgi_application()  # first: it sets Django up before the imports below

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from django_jobqueue.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {"http": django_asgi_app, "websocket": URLRouter(websocket_urlpatterns)}
)
