"""The search box of the job and dead-letter lists, kept fast on tables of millions of rows.

A term is looked up, in this order:

1. as a whole job id: one probe of the unique index on ``job_id`` (dead letters: its index),
   over the whole table; when a row has that id, the search is that row;
2. otherwise as text (the whole term, case-insensitive) in the job id, the name, the
   arguments, the metadata and the errors of the newest :data:`SEARCH_WINDOW` rows only: the
   condition ``id > (the largest id) - SEARCH_WINDOW`` is a range of the primary key, so the
   database reads at most that many rows however large the table (the largest id is one
   probe of the primary key's index). Older rows are reached through the filters (status,
   queue, name) and the job id.

No index is added for it (none is written on the enqueue path for a search box); the query
plan on a million rows is in docs/admin.md ("Search").
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from ..options import JOB_ID_MAX_LENGTH

#: Text searches read at most this many of the newest rows (by primary key).
SEARCH_WINDOW = 100_000


def search(queryset: QuerySet[Any], term: str, fields: tuple[str, ...]) -> QuerySet[Any]:
    """``queryset`` narrowed to ``term``: the row of that job id, else the newest
    :data:`SEARCH_WINDOW` rows whose ``fields`` contain it (the module's docstring)."""
    term = term.strip()
    if not term:
        return queryset
    if len(term) <= JOB_ID_MAX_LENGTH:
        by_id = queryset.filter(job_id=term)
        if by_id.exists():
            return by_id
    top = (
        queryset.model._default_manager.using(queryset.db)
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )
    if top is None:
        return queryset.none()
    matches = Q()
    for name in fields:
        matches |= Q(**{f"{name}__icontains": term})
    return queryset.filter(pk__gt=top - SEARCH_WINDOW).filter(matches)
