"""Jobs of the uniqueness, metadata and context tests (imported by ``jobs``, so a worker
process knows them)."""

from django.utils import translation

from django_jobqueue import job


@job(unique=True)
def refresh_account(account_id, full=False):
    return account_id


@job(unique=("account_id",))
def sync_account(account_id, since=None):
    return since


@job(unique=True, unique_period=3600)
def hourly_report(account_id):
    return account_id


RERUNS: list[int] = []


@job(unique=True)
def asks_for_a_rerun(times):
    """Enqueues itself while it runs (a running duplicate) until it ran ``times`` times."""
    RERUNS.append(len(RERUNS))
    if len(RERUNS) < times:
        asks_for_a_rerun.using(on_duplicate="rerun").enqueue(times)
    return len(RERUNS)


@job(takes_context=True)
def shows_metadata(ctx, *args, **kwargs):
    return {"metadata": ctx.metadata, "args": list(args), "kwargs": kwargs}


@job
def active_language():
    return translation.get_language()
