from django.db import models


class Execution(models.Model):
    """One row per job execution, written by the job itself."""

    tag = models.CharField(max_length=200)
    pid = models.IntegerField()
    started = models.DateTimeField(null=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "testapp"


class Interval(models.Model):
    """When one run of a job started and ended, written by the job itself (overlap tests)."""

    tag = models.CharField(max_length=200)
    pid = models.IntegerField()
    started = models.DateTimeField()
    ended = models.DateTimeField()

    class Meta:
        app_label = "testapp"
