from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path

from django_jobqueue import JobFailedError, JobTimeoutError
from django_jobqueue.metrics.views import metrics_view
from tests.testapp.jobs import add


async def add_view(request: HttpRequest, x: int, y: int) -> JsonResponse:
    """An async view that waits for a job, as an API gateway would."""
    try:
        value = await add.using(timeout=float(request.GET.get("timeout", 10))).aenqueue_and_wait(
            x, y
        )
    except JobTimeoutError as exc:
        return JsonResponse({"error": str(exc)}, status=504)
    except JobFailedError as exc:
        return JsonResponse({"error": exc.error}, status=500)
    return JsonResponse({"result": value})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("add/<int:x>/<int:y>", add_view),
    path("metrics/", metrics_view),
    path("jobqueue/", include("django_jobqueue.urls")),
]
