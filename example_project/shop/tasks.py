"""A task of Django's Tasks framework next to the shop's jobs (shop/jobs.py): the same queue,
workers, admin, retries and dead letters. django-jobqueue imports this module when TASKS
names its backend (settings.py sets it on Django 6, or with the django-tasks backport)."""

import django
from django.core.mail import send_mail

if django.VERSION >= (6, 0):
    from django.tasks import task
else:
    from django_tasks import task


@task(queue_name="emails", priority=5)
def send_receipt(email, order_total):
    """Email a receipt. ``send_receipt.enqueue("a@example.com", 42)`` returns a TaskResult
    whose id is a job id: ``get_job(result.id)`` waits for it or cancels it."""
    send_mail(
        "Your receipt",
        f"Thank you for your order of {order_total}.",
        None,
        [email],
    )
    return {"sent_to": email}
