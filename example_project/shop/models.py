from django.db import models
from django.db.models import F


class UpstreamCall(models.Model):
    """How often the flaky job has called its (simulated) payment provider, per order."""

    order = models.CharField(max_length=100, unique=True)
    calls = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.order}: {self.calls} call(s)"

    @classmethod
    def record(cls, order: str) -> int:
        """Count one more call for ``order``; return how many there were."""
        cls.objects.get_or_create(order=order)
        cls.objects.filter(order=order).update(calls=F("calls") + 1)
        return cls.objects.get(order=order).calls


class Order(models.Model):
    """An order imported by the ``import_orders`` job (``@job(atomic=True)``), in batches."""

    batch = models.CharField(max_length=100, db_index=True)
    number = models.PositiveIntegerField()

    def __str__(self) -> str:
        return f"{self.batch} #{self.number}"
