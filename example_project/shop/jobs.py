"""The example's jobs: one per pattern. A worker finds them because django-jobqueue imports
the ``jobs`` module of every installed app."""

import hashlib
import time
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db.models import Count
from django.db.models.functions import TruncDate
from django.utils import timezone

from django_jobqueue import job
from django_jobqueue.models import Job
from django_jobqueue.notifications import hub

from .models import UpstreamCall

# -- API gateway: a view waits for this one --------------------------------------------------


@job(queue="api", max_attempts=1, result_ttl=300)
def analyse_text(text, delay=0.0, fail=False):
    """Analyse ``text``. ``delay`` seconds of pretend work; ``fail`` raises, to see a 500.

    One attempt: someone is waiting for the answer, so failing fast beats retrying.
    """
    if delay:
        time.sleep(delay)
    if fail:
        raise RuntimeError("the analysis failed, as asked with fail=true")
    words = text.split()
    return {
        "words": len(words),
        "characters": len(text),
        "longest_word": max(words, key=len, default=""),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


# -- background report: the client polls --------------------------------------------------------


@job(queue="reports", result_ttl=24 * 3600)
def build_report(kind, days, delay=2.0):
    """A slow report, kept for a day. ``kind``: "signups" per day, or "jobs" by status."""
    time.sleep(delay)  # stands in for a heavy query or a PDF rendering
    since = timezone.now() - timedelta(days=days)
    if kind == "signups":
        per_day = (
            get_user_model()
            .objects.filter(date_joined__gte=since)
            .annotate(day=TruncDate("date_joined"))
            .values("day")
            .annotate(signups=Count("id"))
            .order_by("day")
        )
        rows = [{"day": row["day"].isoformat(), "signups": row["signups"]} for row in per_day]
    else:
        per_status = (
            Job.objects.filter(enqueued_at__gte=since)
            .values("name", "status")
            .annotate(jobs=Count("id"))
            .order_by("name", "status")
        )
        rows = list(per_status)
    return {
        "kind": kind,
        "days": days,
        "rows": rows,
        "generated_at": timezone.now().isoformat(),
    }


# -- live progress: the page shows a bar that moves --------------------------------------------


def report_progress(job_id, current, total, message):
    """Record a job's progress and tell its watchers: what the worker does with
    ``ctx.set_progress(current, total=total, message=message)`` (``@job(takes_context=True)``).

    A stand-in until this tree's worker writes ``set_progress`` itself: the same UPDATE of
    the job's ``progress`` column, then the same ``hub().job_progress()`` call.
    """
    value = {
        "current": current,
        "total": total,
        "message": message,
        "updated_at": timezone.now().isoformat(),
    }
    Job.objects.filter(job_id=job_id).update(progress=value)
    hub().job_progress([job_id])


@job(queue="reports", result_ttl=24 * 3600)
def render_report(report_id, pages=20, seconds_per_page=0.15):
    """Render ``pages`` pages (pretend work), reporting progress after each one."""
    for page in range(1, pages + 1):
        time.sleep(seconds_per_page)
        report_progress(report_id, page, pages, f"rendering page {page} of {pages}")
    return {"pages": pages, "generated_at": timezone.now().isoformat()}


# -- sign-up: enqueued in the transaction that creates the user ----------------------------------


@job(queue="emails", max_attempts=5)
def send_welcome_email(user_id):
    """Send the welcome email (printed by the worker: the console email backend)."""
    user = get_user_model().objects.get(pk=user_id)
    send_mail(
        subject="Welcome to the example shop",
        message=f"Hello {user.username},\n\nthanks for signing up!\n",
        from_email=None,
        recipient_list=[user.email],
    )
    return {"to": user.email}


# -- a debounced job: many clicks, one run with the last arguments --------------------------------


@job(unique=("shop",), result_ttl=60)
def reindex_search(shop, reason=""):
    """Rebuild a shop's search index: one job per shop (``unique``), enqueued with
    ``on_duplicate="replace"`` and a delay, so a burst of edits runs it once, with the last
    edit's reason."""
    return {"shop": shop, "reason": reason}


# -- retries and dead letters ---------------------------------------------------------------------


@job(max_attempts=5)
def charge_card(order):
    """Call a payment provider that is down twice, then answers (simulated per order).

    The first two attempts fail; the worker retries with backoff and the third succeeds.
    """
    calls = UpstreamCall.record(order)
    if calls <= 2:
        raise ConnectionError(f"payment provider unavailable (call {calls} for order {order})")
    return {"order": order, "charged": True, "calls": calls}


@job(max_attempts=3)
def import_feed(url):
    """A poison job: it always fails, so after three attempts it becomes a dead letter.

    Look for it in the admin under Job queue > Dead letters, then requeue or delete it.
    """
    raise ValueError(f"cannot parse the feed at {url}: it is not XML")
