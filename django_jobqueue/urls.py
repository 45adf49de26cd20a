"""URLs of the JSON status view: ``path("jobqueue/", include("django_jobqueue.urls"))``.

``watch.js`` polls ``jobqueue/jobs/<token>/`` when WebSockets are not available; with
another prefix, pass ``statusUrl`` to ``DjangoJobqueue.watch()`` (or reverse
``"django_jobqueue:job-status"`` in the view).
"""

from __future__ import annotations

from django.urls import path

from .views import job_status

app_name = "django_jobqueue"

urlpatterns = [
    path("jobs/<str:token>/", job_status, name="job-status"),
]
