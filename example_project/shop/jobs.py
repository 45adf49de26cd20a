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

from django_jobqueue import JobContext, job
from django_jobqueue.models import Job

from .models import Order, UpstreamCall

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


@job(queue="reports", result_ttl=24 * 3600, takes_context=True)
def render_report(ctx: JobContext, pages=20, seconds_per_page=0.15):
    """Render ``pages`` pages (pretend work), reporting progress after each one.

    ``takes_context=True`` passes the :class:`JobContext` first (callers never pass it);
    ``ctx.set_progress()`` keeps the value, and the worker writes it on the job (at most
    every ``PROGRESS_INTERVAL``, the last one always) and tells the page's watchers.
    """
    for page in range(1, pages + 1):
        time.sleep(seconds_per_page)
        ctx.set_progress(page, total=pages, message=f"rendering page {page} of {pages}")
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


# -- a workflow: a chain fetch -> parse -> store -------------------------------------------------


@job
def fetch_page(url):
    """The chain's first step: fetch a page (simulated: no network in the example)."""
    return {"url": url, "html": f"<h1>{url}</h1><p>Hello from the example shop</p>"}


@job(takes_context=True)
def parse_page(ctx):
    """The second step, queued when ``fetch_page`` completed: reads its result from
    ``ctx.parent_results`` (a chain passes no arguments along) and counts the words."""
    (page,) = ctx.parent_results.values()
    text = page["html"].replace("<", " <").replace(">", "> ")
    words = [word for word in text.split() if not word.startswith("<")]
    return {"url": page["url"], "words": len(words)}


@job(takes_context=True)
def store_page(ctx):
    """The last step: "stores" what ``parse_page`` found, and says which jobs ran before."""
    ((parent, parsed),) = ctx.parent_results.items()
    return {**parsed, "stored": True, "after": parent}


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


# -- the worker's controls: a schedule, cancel, a limit, a time limit, atomic, retry_on ------------


@job(schedule="* * * * * */10", result_ttl=600)
def refresh_rates():
    """A periodic job: every running worker takes part, and each tick (every 10 seconds: the
    sixth cron field is seconds) is enqueued once, with the id ``schedule:<name>:<tick>``."""
    return {"EUR": 1.0, "USD": 1.08, "refreshed_at": timezone.now().isoformat()}


@job(queue="reports", takes_context=True)
def export_orders(ctx: JobContext, rows=200, seconds_per_row=0.1):
    """A long export that can be cancelled: it looks at ``ctx.cancel_requested`` between rows
    and stops there. The run then ends "cancelled" whatever it returns."""
    for row in range(1, rows + 1):
        if ctx.cancel_requested:
            return {"exported": row - 1, "stopped": "cancel requested"}
        time.sleep(seconds_per_row)
        ctx.set_progress(row, total=rows, message=f"row {row} of {rows}")
    return {"exported": rows}


#: The limit key of the partner's API: JOBQUEUE["LIMITS"] in settings.py allows one call at a
#: time, across every worker and host.
PARTNER_API = "partner-api"


@job(limit=PARTNER_API, max_attempts=1)
def call_partner(call, seconds=0.5):
    """Call the partner's API (pretend). ``running_at_once`` counts the calls running right
    now, this one included: with the limit it is always 1, though the worker has 4 threads."""
    running = Job.objects.filter(name=call_partner.name, status="running").count()
    started = timezone.now()
    time.sleep(seconds)
    return {"call": call, "running_at_once": running, "started_at": started.isoformat()}


@job(time_limit=1, max_attempts=1)
def crunch_numbers(seconds=5.0):
    """Work for ``seconds`` in small steps: its ``time_limit`` of 1 s stops it at the next
    step (a sync job is interrupted between Python steps, never inside a blocking C call)."""
    deadline = time.monotonic() + seconds
    steps = 0
    while time.monotonic() < deadline:
        time.sleep(0.05)
        steps += 1
    return {"steps": steps}


@job(atomic=True, takes_context=True, max_attempts=2)
def import_orders(ctx: JobContext, batch, count=3):
    """Write ``count`` orders of ``batch``; the first attempt fails before the last one.

    ``atomic=True``: each attempt runs in a transaction that also records its completion, so
    the failed attempt's two orders are rolled back with it and the retry starts clean: the
    batch ends with ``count`` orders, not ``2 * count - 1``.
    """
    for number in range(1, count + 1):
        if ctx.attempt == 1 and number == count:
            raise ConnectionError(f"the warehouse hung up before order {number} (attempt 1)")
        Order.objects.create(batch=batch, number=number)
    kept = Order.objects.filter(batch=batch).count()
    return {"batch": batch, "orders": kept, "attempt": ctx.attempt}


@job(retry_on=(ConnectionError,), max_attempts=5, takes_context=True)
def notify_partner(ctx: JobContext, order):
    """``retry_on=(ConnectionError,)``: a ConnectionError is retried (up to 5 attempts); any
    other error fails the job at once, without using the attempts left."""
    if ctx.attempt == 1:
        raise ConnectionError(f"the partner is unreachable (order {order}, attempt 1)")
    raise ValueError(f"the partner refused order {order}: it does not know this product")
