"""The example's JSON API: one small view per pattern.

Every view validates its input and answers bad input with ``400 {"error": "..."}``, before
anything is written. The POST views are protected against CSRF like any Django view: the
home page's script sends the token in the ``X-CSRFToken`` header.

A job's status is never looked up by its bare id, which may be guessable
(``welcome-email-<user pk>``): a view that enqueues a job answers with a status URL that
carries the id signed with ``django.core.signing``, and the status views refuse anything
else with 404. A project with users would rather check that the job belongs to
``request.user``; the signature is for anonymous clients like this demo's.
"""

import json
import math
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import wraps
from inspect import iscoroutinefunction
from typing import Any

from django.contrib.auth import get_user_model
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.urls import reverse

from django_jobqueue import JobFailedError, JobHandle, JobTimeoutError, chain, get_job
from django_jobqueue.models import Schedule

from .jobs import (
    analyse_text,
    build_report,
    call_partner,
    charge_card,
    crunch_numbers,
    export_orders,
    fetch_page,
    import_feed,
    import_orders,
    notify_partner,
    parse_page,
    refresh_rates,
    reindex_search,
    render_report,
    send_welcome_email,
    store_page,
)


class BadRequest(Exception):
    """Bad input: answered with 400 and the message."""


def _wrong_method(request: HttpRequest, methods: tuple[str, ...]) -> JsonResponse | None:
    if request.method in methods:
        return None
    response = JsonResponse(
        {"error": f"use {' or '.join(methods)}, not {request.method}"}, status=405
    )
    response["Allow"] = ", ".join(methods)
    return response


def api(*methods: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A JSON endpoint, sync or async: only ``methods``; BadRequest -> 400."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        if iscoroutinefunction(view):
            async_view: Callable[..., Awaitable[JsonResponse]] = view

            @wraps(view)
            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if refused := _wrong_method(request, methods):
                    return refused
                try:
                    return await async_view(request, *args, **kwargs)
                except BadRequest as exc:
                    return JsonResponse({"error": str(exc)}, status=400)

            return async_wrapper

        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            if refused := _wrong_method(request, methods):
                return refused
            try:
                return view(request, *args, **kwargs)
            except BadRequest as exc:
                return JsonResponse({"error": str(exc)}, status=400)

        return wrapper

    return decorate


# -- status URLs: the job id, signed ------------------------------------------------------------

STATUS_MAX_AGE = 24 * 3600  # seconds a status URL works; the report's result lives as long


def status_url(request: HttpRequest, job_id: str, *, kind: str = "job") -> str:
    """The URL where a client follows this job: ``/api/jobs/<token>`` (or ``/api/reports/``).

    The token is the job id signed with SECRET_KEY and a salt per kind, so a job's URL
    cannot be guessed from its id, and a job URL is no report URL.
    """
    view = "report-status" if kind == "report" else "job-status"
    return request.build_absolute_uri(reverse(view, args=[sign(job_id, kind=kind)]))


def sign(job_id: str, *, kind: str = "job") -> str:
    """The token of a status URL: ``job_id`` signed, with a salt per kind."""
    return signing.dumps(job_id, salt=f"example.status.{kind}", compress=True)


def job_for_token(token: str, *, kind: str = "job") -> JobHandle | None:
    """The job a status token names, or None when it is forged, expired or pruned."""
    try:
        job_id = signing.loads(token, salt=f"example.status.{kind}", max_age=STATUS_MAX_AGE)
    except signing.BadSignature:  # also SignatureExpired
        return None
    return get_job(job_id) if isinstance(job_id, str) else None


def json_body(request: HttpRequest) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        data = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def text_field(data: dict[str, Any], name: str, *, max_length: int, default: Any = ...) -> Any:
    value = data.get(name, default)
    if value is ...:
        raise BadRequest(f"{name!r} is required")
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{name!r} must be a non-empty string")
    if len(value) > max_length or "\x00" in value:
        raise BadRequest(f"{name!r} must be at most {max_length} characters, without NUL")
    return value


def number_field(
    data: dict[str, Any], name: str, *, low: float, high: float, default: float
) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{name!r} must be a number")
    if not low <= value <= high:
        raise BadRequest(f"{name!r} must be between {low} and {high}")
    return value


def bool_field(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name!r} must be true or false")
    return value


def describe(handle: JobHandle) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": handle.id,
        "name": handle.name,
        "queue": handle.queue,
        "status": handle.status,
        "attempts": handle.attempts,
    }
    if handle.status == "completed":
        answer["result"] = handle.result
    elif handle.error:
        answer["error"] = handle.error  # failed for good, or the last failed attempt
    for moment in ("enqueued_at", "started_at", "finished_at"):
        value = getattr(handle, moment)
        answer[moment] = value.isoformat() if value else None
    return answer


# -- API gateway -------------------------------------------------------------------------------


def _analysis_input(request: HttpRequest) -> tuple[str, float, float, bool]:
    data = json_body(request)
    text = text_field(data, "text", max_length=10_000)
    delay = number_field(data, "delay", low=0, high=30, default=0)
    timeout = number_field(data, "timeout", low=0.1, high=30, default=5)
    return text, delay, timeout, bool_field(data, "fail")


def _timed_out(request: HttpRequest, exc: JobTimeoutError) -> JsonResponse:
    return JsonResponse(
        {
            "error": f"no answer within {exc.timeout:g}s; the job keeps running",
            "job_id": exc.job_id,
            "status_url": status_url(request, exc.job_id),
        },
        status=504,
    )


@api("POST")
def process(request: HttpRequest) -> JsonResponse:
    """Run ``analyse_text`` on a worker and wait for it: 200, 504 on timeout, 500 on failure.

    Body: ``{"text": "...", "delay": 0, "timeout": 5, "fail": false}``.
    """
    text, delay, timeout, fail = _analysis_input(request)
    job = analyse_text.using(timeout=timeout)
    try:
        result = job.enqueue_and_wait(text, delay=delay, fail=fail)
    except JobTimeoutError as exc:
        return _timed_out(request, exc)
    except JobFailedError as exc:
        return JsonResponse({"error": exc.error, "job_id": exc.job_id}, status=500)
    return JsonResponse({"result": result})


@api("POST")
async def process_async(request: HttpRequest) -> JsonResponse:
    """``process`` as an async view: ``aenqueue_and_wait`` holds no thread while it waits."""
    text, delay, timeout, fail = _analysis_input(request)
    job = analyse_text.using(timeout=timeout)
    try:
        result = await job.aenqueue_and_wait(text, delay=delay, fail=fail)
    except JobTimeoutError as exc:
        return _timed_out(request, exc)
    except JobFailedError as exc:
        return JsonResponse({"error": exc.error, "job_id": exc.job_id}, status=500)
    return JsonResponse({"result": result, "view": "async"})


# -- background report -------------------------------------------------------------------------


REPORT_KINDS = ("signups", "jobs")


@api("POST")
def create_report(request: HttpRequest) -> JsonResponse:
    """Queue a report and answer at once: 202 with its id and where to ask for it.

    Body: ``{"kind": "signups" | "jobs", "days": 7, "delay": 2}``.
    """
    data = json_body(request)
    kind = data.get("kind", "signups")
    if kind not in REPORT_KINDS:
        raise BadRequest(f"'kind' must be one of {', '.join(REPORT_KINDS)}")
    days = data.get("days", 7)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 365:
        raise BadRequest("'days' must be a whole number from 1 to 365")
    delay = number_field(data, "delay", low=0, high=60, default=2)
    handle = build_report.enqueue(kind, days, delay=delay)
    url = status_url(request, handle.id, kind="report")
    response = JsonResponse({"id": handle.id, "status": handle.status, "url": url}, status=202)
    response["Location"] = url
    return response


@api("GET")
def report_status(request: HttpRequest, token: str) -> JsonResponse:
    """Queued, running, completed (with the report) or failed (with the error).

    ``token`` is the signed report id from ``create_report``'s answer.
    """
    handle = job_for_token(token, kind="report")
    if handle is None or handle.name != build_report.name:
        return JsonResponse({"error": "no such report (or it expired)"}, status=404)
    answer: dict[str, Any] = {"id": handle.id, "status": handle.status}
    if handle.status == "completed":
        answer["report"] = handle.result
    elif handle.status == "failed":
        answer["error"] = handle.error
    return JsonResponse(answer)


@api("POST")
def create_live_report(request: HttpRequest) -> JsonResponse:
    """Queue a report the page follows live: 202 with its watch token and status URL.

    Body: ``{"pages": 20}``. The page hands the token to ``DjangoJobqueue.watch()``
    (``django_jobqueue/watch.js``), which opens ``ws/jobqueue/jobs/<token>/`` and falls back
    to polling ``status_url`` (django-jobqueue's JSON status view) without WebSockets.
    """
    data = json_body(request)
    pages = data.get("pages", 20)
    if isinstance(pages, bool) or not isinstance(pages, int) or not 1 <= pages <= 200:
        raise BadRequest("'pages' must be a whole number from 1 to 200")
    report_id = f"live-report-{uuid.uuid4().hex}"
    handle = render_report.using(job_id=report_id).enqueue(pages=pages)
    token = handle.watch_token(max_age=3600)
    return JsonResponse(
        {
            "id": handle.id,
            "watch_token": token,
            "status_url": request.build_absolute_uri(
                reverse("django_jobqueue:job-status", args=[token])
            ),
        },
        status=202,
    )


# -- sign-up -----------------------------------------------------------------------------------


@api("POST")
def signup(request: HttpRequest) -> JsonResponse:
    """Create a user and queue their welcome email in one transaction: both or neither.

    Body: ``{"username": "...", "email": "...", "password": "...", "simulate_failure": false}``.
    ``simulate_failure`` raises after both were written: the transaction rolls back, and
    neither the user nor the email job ever existed.
    """
    data = json_body(request)
    username = text_field(data, "username", max_length=150)
    email = text_field(data, "email", max_length=254)
    password = text_field(data, "password", max_length=128)
    simulate_failure = bool_field(data, "simulate_failure")
    try:
        validate_email(email)
    except ValidationError:
        raise BadRequest("'email' is not a valid email address") from None
    users = get_user_model().objects
    try:
        with transaction.atomic():
            user = users.create_user(username=username, email=email, password=password)
            welcome = send_welcome_email.using(job_id=f"welcome-email-{user.pk}").enqueue(user.pk)
            if simulate_failure:
                raise RuntimeError("simulated failure after the user and the job were written")
    except IntegrityError:
        raise BadRequest(f"the username {username!r} is taken") from None
    except RuntimeError as exc:
        return JsonResponse(
            {
                "error": str(exc),
                "rolled_back": {
                    "user_id": user.pk,
                    "welcome_email_job": welcome.id,
                    "status_url": status_url(request, welcome.id),
                },
            },
            status=500,
        )
    return JsonResponse(
        {
            "user_id": user.pk,
            "username": user.username,
            "welcome_email_job": welcome.id,
            "status_url": status_url(request, welcome.id),
        },
        status=201,
    )


# -- retries and dead letters ------------------------------------------------------------------


@api("POST")
def flaky(request: HttpRequest) -> JsonResponse:
    """Queue ``charge_card``: it fails twice, is retried with backoff, then succeeds."""
    order = f"order-{uuid.uuid4().hex[:8]}"
    handle = charge_card.enqueue(order)
    return JsonResponse(
        {"job_id": handle.id, "order": order, "status_url": status_url(request, handle.id)},
        status=202,
    )


@api("POST")
def poison(request: HttpRequest) -> JsonResponse:
    """Queue ``import_feed``: it always fails and ends as a dead letter in the admin."""
    data = json_body(request)
    url = text_field(data, "url", max_length=2000, default="https://example.com/feed.xml")
    handle = import_feed.enqueue(url)
    return JsonResponse(
        {
            "job_id": handle.id,
            "status_url": status_url(request, handle.id),
            "dead_letters": request.build_absolute_uri("/admin/django_jobqueue/deadletter/"),
        },
        status=202,
    )


# -- the worker's controls ---------------------------------------------------------------------


def _queued(request: HttpRequest, handle: JobHandle, **extra: Any) -> JsonResponse:
    """202 with the job's id and status URL (which the page follows), and ``extra``."""
    answer = {"job_id": handle.id, "status": handle.status, **extra}
    return JsonResponse({**answer, "status_url": status_url(request, handle.id)}, status=202)


@api("POST")
def schedule(request: HttpRequest) -> JsonResponse:
    """``refresh_rates``'s schedule: its cron, its last tick and that tick's job, which the
    page follows; the admin's Schedules list shows its last and next run."""
    answer: dict[str, Any] = {
        "schedule": refresh_rates.name,
        "cron": refresh_rates.schedule,
        "admin": request.build_absolute_uri("/admin/django_jobqueue/schedule/"),
    }
    row = Schedule.objects.filter(name=refresh_rates.name).first()
    if row is None or not row.last_job_id:
        answer["last_tick"] = "none yet: a worker enqueues the next one within 10 seconds"
        return JsonResponse(answer)
    answer["last_tick"] = row.last_tick.isoformat() if row.last_tick else None
    answer["job_id"] = row.last_job_id
    answer["status_url"] = status_url(request, row.last_job_id)
    return JsonResponse(answer)


@api("POST")
def export(request: HttpRequest) -> JsonResponse:
    """Queue a 20-second ``export_orders``; ``cancel_url`` cancels it (the page does, 2 s
    later)."""
    handle = export_orders.enqueue()
    cancel_url = request.build_absolute_uri(reverse("cancel-job", args=[sign(handle.id)]))
    return _queued(request, handle, cancel_url=cancel_url)


@api("POST")
def cancel_job(request: HttpRequest, token: str) -> JsonResponse:
    """Cancel the job of a status token: a queued job at once, a running one is asked to
    stop. ``cancelled`` is False for a job that had already finished."""
    handle = job_for_token(token)
    if handle is None:
        return JsonResponse({"error": "no such job (or its result expired)"}, status=404)
    return JsonResponse({"job_id": handle.id, "cancelled": handle.cancel()})


@api("POST")
def partner_calls(request: HttpRequest) -> JsonResponse:
    """Queue three ``call_partner`` jobs at once: their limit runs them one at a time."""
    handles = call_partner.enqueue_many([(1,), (2,), (3,)])
    urls = [status_url(request, handle.id) for handle in handles]
    return _queued(request, handles[-1], jobs=[h.id for h in handles], status_urls=urls)


@api("POST")
def crunch(request: HttpRequest) -> JsonResponse:
    """Queue ``crunch_numbers`` for 5 s: its 1 s time limit fails it (one attempt)."""
    return _queued(request, crunch_numbers.enqueue(seconds=5.0))


@api("POST")
def import_batch(request: HttpRequest) -> JsonResponse:
    """Queue ``import_orders`` (``atomic=True``) for a new batch of 3 orders."""
    batch = f"batch-{uuid.uuid4().hex[:8]}"
    return _queued(request, import_orders.enqueue(batch), batch=batch)


@api("POST")
def notify(request: HttpRequest) -> JsonResponse:
    """Queue ``notify_partner`` (``retry_on=(ConnectionError,)``): retried once, then failed
    at once by an error outside ``retry_on``."""
    order = f"order-{uuid.uuid4().hex[:8]}"
    return _queued(request, notify_partner.enqueue(order), order=order)


# -- a debounced job ----------------------------------------------------------------------------


@api("POST")
def reindex(request: HttpRequest) -> JsonResponse:
    """Queue ``reindex_search`` two seconds from now, or push the queued one back and give it
    this call's reason (``on_duplicate="replace"``): clicks in a burst run it once."""
    reason = text_field(json_body(request), "reason", max_length=200, default="")
    handle = reindex_search.using(on_duplicate="replace", run_after=timedelta(seconds=2)).enqueue(
        "main", reason=reason
    )
    return JsonResponse(
        {
            "job_id": handle.id,
            "created": handle.created,
            "status_url": status_url(request, handle.id),
        },
        status=202,
    )


# -- a workflow -----------------------------------------------------------------------------------


@api("POST")
def workflow(request: HttpRequest) -> JsonResponse:
    """Enqueue ``chain(fetch_page, parse_page, store_page)`` in one transaction: each runs
    after the one before completed; the page follows the last one."""
    url = text_field(json_body(request), "url", max_length=2000, default="https://example.com/")
    handles = chain(fetch_page.bind(url), parse_page.bind(), store_page.bind()).enqueue()
    return JsonResponse(
        {
            "job_ids": [handle.id for handle in handles],
            "statuses": [handle.status for handle in handles],
            "status_url": status_url(request, handles[-1].id),
        },
        status=202,
    )


# -- a job, by its signed status URL -------------------------------------------------------------


@api("GET")
def job_status(request: HttpRequest, token: str) -> JsonResponse:
    """The job named by a status URL's token; 404 for a bare job id or a forged token."""
    handle = job_for_token(token)
    if handle is None:
        return JsonResponse({"error": "no such job (or its result expired)"}, status=404)
    return JsonResponse(describe(handle))
