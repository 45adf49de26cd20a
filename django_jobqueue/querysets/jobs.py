"""``JobQuerySet``: the job verbs, composed from one mixin per concern."""

from __future__ import annotations

from .cancelling import CancellingQuerySet
from .claiming import ClaimingQuerySet
from .leases import LeasesQuerySet
from .limited import LimitedQuerySet
from .outcomes import OutcomesQuerySet
from .producing import ProducingQuerySet
from .reading import ReadingQuerySet
from .upkeep import UpkeepQuerySet


# django-stubs types each QuerySet subclass's as_manager() apart: the mixins' clash here.
class JobQuerySet(  # type: ignore[override]
    ReadingQuerySet,
    ProducingQuerySet,
    LimitedQuerySet,
    ClaimingQuerySet,
    LeasesQuerySet,
    OutcomesQuerySet,
    CancellingQuerySet,
    UpkeepQuerySet,
):
    """The manager of :class:`~django_jobqueue.models.Job` (``Job.objects``): every verb of
    producers, workers and upkeep. Each mixin holds one concern; see :mod:`.querysets`."""
