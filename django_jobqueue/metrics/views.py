"""The scrape view: ``path("metrics/", metrics_view)`` in your ``urls.py``.

It answers anyone who can reach it; protect it as you would an admin page: serve it only on
an internal address, put it behind your proxy's authentication or an IP allow-list, or wrap
it (``staff_member_required(metrics_view)``, or a view of your own that checks a bearer
token and then calls this one). Each scrape runs four grouped queries.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import CONTENT_TYPE, render


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus' text exposition: the worker metrics this process holds (all processes'
    with ``PROMETHEUS_MULTIPROC_DIR``), then the queue's gauges read from the database."""
    return HttpResponse(render(), content_type=CONTENT_TYPE)
