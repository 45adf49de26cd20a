"""The JSON status view: a job's state by its watch token, for clients without WebSockets.

``GET <prefix>/jobs/<token>/`` (see :mod:`django_jobqueue.urls`) answers ``200`` with the
same JSON the WebSocket consumer sends (``{"status", "progress"}`` plus ``"result"`` or
``"error"`` once finished), ``403 {"error": "forbidden"}`` for a missing, forged or expired
token (nothing else is disclosed), ``404 {"error": "gone"}`` when the job no longer exists.
Responses are never cached.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import tokens
from .live import is_run, read_state


@never_cache
@require_GET
def job_status(request: HttpRequest, token: str) -> JsonResponse:
    """The state of the job named by ``token`` (``handle.watch_token()``)."""
    watch = tokens.read_watch(token)
    if watch is None:
        return JsonResponse({"error": "forbidden"}, status=403)
    state = read_state(watch.job_id)
    if state is None or not is_run(watch):  # gone, or the id now names a later run
        return JsonResponse({"error": "gone"}, status=404)
    return JsonResponse(state)
