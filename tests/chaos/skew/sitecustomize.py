"""A host whose wall clock is off: with ``DJQ_CLOCK_SKEW=<seconds>`` in the environment
and this folder first on ``PYTHONPATH``, the process's wall clock as Python code reads it
(``time.time``, ``time.time_ns`` and Django's ``timezone.now``, patched before anything
imports them) is shifted by that many seconds; monotonic clocks and sleeps are untouched,
as on a host whose time synchronisation is off.

libfaketime does the same from below, but its ``clock_nanosleep`` fails with EINVAL in
Debian 12's 0.9.10 when the monotonic clock is left alone (every ``time.sleep`` raises).
``datetime.datetime.now`` itself cannot be shifted without replacing the class, which
breaks ``isinstance`` for every datetime a C extension (psycopg) builds, so code that
reads ``datetime.now()`` directly still sees the true time: the package reads
``timezone.now()``.
"""

import os
import time as _time

_SKEW = float(os.environ.get("DJQ_CLOCK_SKEW", "0") or 0)

if _SKEW:
    from datetime import timedelta as _timedelta

    from django.utils import timezone as _timezone

    _real_time, _real_time_ns, _real_now = _time.time, _time.time_ns, _timezone.now
    _delta = _timedelta(seconds=_SKEW)

    def _time_skewed() -> float:
        return _real_time() + _SKEW

    def _time_ns_skewed() -> int:
        return _real_time_ns() + int(_SKEW * 1e9)

    def _now_skewed():  # type: ignore[no-untyped-def]
        return _real_now() + _delta

    _time.time = _time_skewed
    _time.time_ns = _time_ns_skewed
    _timezone.now = _now_skewed
