from django.contrib import admin
from django.urls import include, path

from example_project import views
from example_project.shop import views as shop

urlpatterns = [
    path("", views.home, name="home"),
    path("admin/", admin.site.urls),
    # API gateway: wait for the job, answer with its result.
    path("api/process", shop.process, name="process"),
    path("api/process-async", shop.process_async, name="process-async"),
    # Background work: answer 202 at once, let the client poll.
    path("api/reports", shop.create_report, name="create-report"),
    path("api/reports/<str:token>", shop.report_status, name="report-status"),
    # Live progress: a report whose page follows it over a WebSocket (watch.js).
    path("api/live-reports", shop.create_live_report, name="create-live-report"),
    # django-jobqueue's JSON status view, which watch.js polls without WebSockets.
    path("jobqueue/", include("django_jobqueue.urls")),
    # A user and their welcome email, in one transaction.
    path("api/signup", shop.signup, name="signup"),
    # Retries and dead letters.
    path("api/flaky", shop.flaky, name="flaky"),
    path("api/poison", shop.poison, name="poison"),
    # The worker's controls: a schedule, cancel, a limit, a time limit, atomic, retry_on.
    path("api/schedule", shop.schedule, name="schedule"),
    path("api/exports", shop.export, name="export"),
    path("api/jobs/<str:token>/cancel", shop.cancel_job, name="cancel-job"),
    path("api/partner-calls", shop.partner_calls, name="partner-calls"),
    path("api/crunch", shop.crunch, name="crunch"),
    path("api/import-orders", shop.import_batch, name="import-orders"),
    path("api/notify-partner", shop.notify, name="notify-partner"),
    # A debounced job: a burst of clicks runs it once, with the last click's arguments.
    path("api/reindex", shop.reindex, name="reindex"),
    # A workflow: a chain of three jobs, each after the one before.
    path("api/workflow", shop.workflow, name="workflow"),
    # A job, by the signed token of the status URL its view answered with.
    path("api/jobs/<str:token>", shop.job_status, name="job-status"),
]
