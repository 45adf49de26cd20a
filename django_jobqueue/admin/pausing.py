"""The overview's pause and resume buttons: a POST (with the admin's CSRF protection) by a
user who may change jobs, done through :func:`~django_jobqueue.pause_queue` and
:func:`~django_jobqueue.resume_queue`, and written to the admin's history (``LogEntry``)
with that user."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.admin import ModelAdmin
from django.contrib.admin.models import ADDITION, DELETION, LogEntry
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from ..exceptions import InvalidJobError
from ..models import QueuePause
from ..pauses import REASON_MAX_LENGTH, pause_queue, paused_queues, resume_queue

#: The form's ``action`` values.
PAUSE, RESUME = "pause", "resume"


def can_pause(model_admin: ModelAdmin[Any], request: HttpRequest) -> bool:
    """Whether ``request``'s user sees the buttons: the Job model's change permission
    (asked of the user: the admin's ``has_change_permission`` is False, jobs being
    read-only there)."""
    opts = model_admin.opts
    return bool(request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}"))


def pauses() -> dict[str, QueuePause]:
    """The paused queues by name, for the overview's rows."""
    return paused_queues()


def _user_name(request: HttpRequest) -> str:
    user = request.user
    return str(user.get_username()) if user.is_authenticated else ""


def _log(request: HttpRequest, pause: QueuePause, flag: int, message: str) -> None:
    user_id = request.user.pk
    assert user_id is not None  # the admin's views require a logged-in staff user
    LogEntry.objects.log_actions(
        user_id=user_id,
        queryset=[pause],
        action_flag=flag,
        change_message=message,
        single_object=True,
    )


def handle_post(model_admin: ModelAdmin[Any], request: HttpRequest) -> HttpResponse:
    """Pause or resume the queue the form names, then back to the overview (a redirect, so
    a reload does not post again). A bad queue name or reason changes nothing and says why.
    """
    if not can_pause(model_admin, request):
        raise PermissionDenied
    action = request.POST.get("action", "")
    queue = request.POST.get("queue", "")
    reason = request.POST.get("reason", "").strip()
    try:
        if action == PAUSE:
            if len(reason) > REASON_MAX_LENGTH:
                raise InvalidJobError(f"the reason is longer than {REASON_MAX_LENGTH} characters")
            pause = pause_queue(queue, reason, _user_name(request))
            _log(request, pause, ADDITION, f"Paused queue {queue!r}: {reason or 'no reason given'}")
            model_admin.message_user(
                request,
                f"Paused queue {queue!r}: workers start none of its jobs until it is resumed "
                "(running jobs finish; new jobs are still accepted).",
                messages.SUCCESS,
            )
        elif action == RESUME:
            existing = paused_queues().get(queue)
            if existing is not None:
                _log(request, existing, DELETION, f"Resumed queue {queue!r}")
            if existing is not None and resume_queue(queue):
                model_admin.message_user(request, f"Resumed queue {queue!r}.", messages.SUCCESS)
            else:
                model_admin.message_user(
                    request, f"Queue {queue!r} is not paused: nothing to resume.", messages.INFO
                )
        else:
            raise InvalidJobError(f"unknown action {action!r}: use {PAUSE!r} or {RESUME!r}")
    except InvalidJobError as exc:
        model_admin.message_user(request, f"Nothing changed: {exc}", messages.ERROR)
    return HttpResponseRedirect(request.path)
