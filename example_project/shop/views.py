"""The example's JSON API: one small view per pattern.

Every view validates its input and answers bad input with ``400 {"error": "..."}``, before
anything is written.
"""

import json
import math
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from django_jobqueue import JobFailedError, JobHandle, JobTimeoutError, get_job

from .jobs import analyse_text, build_report, charge_card, import_feed, send_welcome_email


class BadRequest(Exception):
    """Bad input: answered with 400 and the message."""


def api(*methods: str) -> Callable[[Callable[..., JsonResponse]], Callable[..., JsonResponse]]:
    """A JSON endpoint: only ``methods``, no CSRF (no cookies are used), BadRequest -> 400."""

    def decorate(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            if request.method not in methods:
                response = JsonResponse(
                    {"error": f"use {' or '.join(methods)}, not {request.method}"}, status=405
                )
                response["Allow"] = ", ".join(methods)
                return response
            try:
                return view(request, *args, **kwargs)
            except BadRequest as exc:
                return JsonResponse({"error": str(exc)}, status=400)

        return wrapper

    return decorate


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


@api("POST")
def process(request: HttpRequest) -> JsonResponse:
    """Run ``analyse_text`` on a worker and wait for it: 200, 504 on timeout, 500 on failure.

    Body: ``{"text": "...", "delay": 0, "timeout": 5, "fail": false}``.
    """
    data = json_body(request)
    text = text_field(data, "text", max_length=10_000)
    delay = number_field(data, "delay", low=0, high=30, default=0)
    timeout = number_field(data, "timeout", low=0.1, high=30, default=5)
    fail = bool_field(data, "fail")
    job = analyse_text.using(timeout=timeout)
    try:
        result = job.enqueue_and_wait(text, delay=delay, fail=fail)
    except JobTimeoutError as exc:
        return JsonResponse(
            {
                "error": f"no answer within {exc.timeout:g}s; the job keeps running",
                "job_id": exc.job_id,
            },
            status=504,
        )
    except JobFailedError as exc:
        return JsonResponse({"error": exc.error, "job_id": exc.job_id}, status=500)
    return JsonResponse({"result": result})


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
    url = request.build_absolute_uri(f"/api/reports/{handle.id}")
    response = JsonResponse({"id": handle.id, "status": handle.status, "url": url}, status=202)
    response["Location"] = url
    return response


@api("GET")
def report_status(request: HttpRequest, report_id: str) -> JsonResponse:
    """Queued, running, completed (with the report) or failed (with the error)."""
    handle = get_job(report_id)
    if handle is None or handle.name != build_report.name:
        return JsonResponse({"error": f"no report {report_id!r} (or it expired)"}, status=404)
    answer: dict[str, Any] = {"id": handle.id, "status": handle.status}
    if handle.status == "completed":
        answer["report"] = handle.result
    elif handle.status == "failed":
        answer["error"] = handle.error
    return JsonResponse(answer)


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
                "rolled_back": {"user_id": user.pk, "welcome_email_job": welcome.id},
            },
            status=500,
        )
    return JsonResponse(
        {"user_id": user.pk, "username": user.username, "welcome_email_job": welcome.id},
        status=201,
    )


# -- retries and dead letters ------------------------------------------------------------------


@api("POST")
def flaky(request: HttpRequest) -> JsonResponse:
    """Queue ``charge_card``: it fails twice, is retried with backoff, then succeeds."""
    order = f"order-{uuid.uuid4().hex[:8]}"
    handle = charge_card.enqueue(order)
    return JsonResponse(
        {"job_id": handle.id, "order": order, "url": request.build_absolute_uri(_job_url(handle))},
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
            "url": request.build_absolute_uri(_job_url(handle)),
            "dead_letters": request.build_absolute_uri("/admin/django_jobqueue/deadletter/"),
        },
        status=202,
    )


# -- any job -----------------------------------------------------------------------------------


def _job_url(handle: JobHandle) -> str:
    return f"/api/jobs/{handle.id}"


@api("GET")
def job_status(request: HttpRequest, job_id: str) -> JsonResponse:
    handle = get_job(job_id)
    if handle is None:
        return JsonResponse({"error": f"no job {job_id!r} (or its result expired)"}, status=404)
    return JsonResponse(describe(handle))
