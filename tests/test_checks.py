"""System checks, by id and through ``manage.py check``."""

from __future__ import annotations

import math
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from django_jobqueue import conf, job
from django_jobqueue.checks import check_channel_layer, check_limits, check_settings
from django_jobqueue.registry import registry


def _ids(messages):
    return [m.id for m in messages]


def test_default_settings_pass(settings):
    assert check_settings() == []


def test_jobqueue_must_be_a_dict(settings):
    settings.JOBQUEUE = ["nope"]
    assert _ids(check_settings()) == ["django_jobqueue.E001"]


def test_unknown_key_is_an_error_that_lists_valid_keys(settings):
    settings.JOBQUEUE = {"MAX_ATEMPTS": 5}
    (error,) = check_settings()
    assert error.id == "django_jobqueue.E003"
    assert "MAX_ATEMPTS" in error.msg and "MAX_ATTEMPTS" in error.hint


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("MAX_ATTEMPTS", 0, "E005"),
        ("MAX_ATTEMPTS", "3", "E004"),
        ("LEASE_SECONDS", True, "E004"),
        ("POLL_INTERVAL", -1, "E005"),
        ("WAIT_TIMEOUT", 0, "E005"),
        ("DEFAULT_QUEUE", "has spaces", "E006"),
        ("DEFAULT_QUEUE", 5, "E004"),
        ("DEFAULT_QUEUE", None, "E004"),
        ("CHANNEL_LAYER", 5, "E004"),
        ("LIMITS_CACHE", ["limits"], "E004"),
        ("EAGER", "yes", "E004"),
        ("WORKER_SYNCHRONOUS_COMMIT", 1, "E004"),
        ("METRICS", 0, "E004"),
        ("TRACING", "off", "E004"),
    ],
)
def test_bad_values_are_errors(settings, key, value, expected):
    settings.JOBQUEUE = {key: value}
    messages = check_settings()
    assert _ids(messages) == [f"django_jobqueue.{expected}"]
    assert f"JOBQUEUE[{key!r}] is {value!r}" in messages[0].msg
    assert "; it must be " in messages[0].msg


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "E005"),
        (-5, "E005"),
        (0.0, "E005"),
        ("abc", "E004"),
        ("30", "E004"),
        (True, "E004"),
        (7 * 86400 + 1, "E011"),
        (math.nan, "E010"),
    ],
)
def test_a_time_limit_that_cannot_work_is_an_error(settings, value, expected):
    """Defect: 0, -5 and "abc" passed; every job without a limit of its own was then
    dead-lettered "ran longer than its time_limit of -5s"."""
    settings.JOBQUEUE = {"TIME_LIMIT": value}
    messages = check_settings()
    assert _ids(messages) == [f"django_jobqueue.{expected}"]
    assert "or None (no limit)" in messages[0].msg and messages[0].hint


@pytest.mark.parametrize("value", [None, 0.001, 1, 30.5, 7 * 86400])
def test_a_time_limit_that_can_work_passes(settings, value):
    settings.JOBQUEUE = {"TIME_LIMIT": value}
    assert check_settings() == []


def test_missing_channel_layer_alias_is_an_error(settings):
    settings.JOBQUEUE = {"CHANNEL_LAYER": "notifications"}
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    assert _ids(check_channel_layer()) == ["django_jobqueue.E002"]


def test_no_channel_layers_at_all_is_fine(settings):
    settings.JOBQUEUE = {}
    del settings.CHANNEL_LAYERS
    assert check_channel_layer() == []


def test_polling_only_is_fine(settings):
    settings.JOBQUEUE = {"CHANNEL_LAYER": None}
    assert check_channel_layer() == []


def test_in_memory_layer_warns(settings):
    settings.JOBQUEUE = {}
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    assert _ids(check_channel_layer()) == ["django_jobqueue.W001"]


@pytest.mark.parametrize(
    ("backend", "why"),
    [
        ("channels_rediss.core.RedisChannelLayer", "No module named 'channels_rediss'"),
        ("channels.layers.InMemoryChannelLayr", "does not define"),
        ("", "ImportError"),
    ],
)
def test_a_layer_backend_that_cannot_be_imported_warns(settings, backend, why):
    """Not an error (the queue still works, by polling), but said at ``check`` time rather
    than in one worker log line."""
    settings.JOBQUEUE = {}
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": backend}}
    (warning,) = check_channel_layer()
    assert warning.id == "django_jobqueue.W003"
    assert why in warning.msg and "poll the database" in warning.msg
    assert "django-jobqueue[redis]" in warning.hint


def test_redis_layer_with_a_long_socket_timeout_passes(settings):
    settings.JOBQUEUE = {}
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:6379/0", "socket_timeout": 10}]},
        }
    }
    assert check_channel_layer() == []


def test_redis_py_8_default_socket_timeout_warns(settings):
    from importlib.metadata import version

    settings.JOBQUEUE = {}
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:6379/0"]},
        }
    }
    expected = ["django_jobqueue.W002"] if int(version("redis").split(".")[0]) >= 8 else []
    assert _ids(check_channel_layer()) == expected


def test_pubsub_layer_has_no_blocking_receive_to_time_out(settings):
    """RedisPubSubChannelLayer reads with a 0.1 s timeout, not a 5 s BZPOPMIN: no W002."""
    settings.JOBQUEUE = {}
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:6379/0"]},
        }
    }
    assert check_channel_layer() == []


@pytest.mark.django_db
def test_manage_py_check_reports_errors(settings):
    settings.JOBQUEUE = {"POLL_INTERVALL": 1}
    with pytest.raises(SystemCheckError, match=r"django_jobqueue\.E003"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


@pytest.mark.django_db
def test_manage_py_check_shows_the_in_memory_warning(settings):
    settings.SILENCED_SYSTEM_CHECKS = []
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    err = StringIO()
    call_command("check", stdout=StringIO(), stderr=err)
    assert "django_jobqueue.W001" in err.getvalue()


def test_jobqueue_none_means_defaults(settings):
    settings.JOBQUEUE = None
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    assert check_settings() == []
    assert _ids(check_channel_layer()) == ["django_jobqueue.W001"]  # the default alias is used


@pytest.mark.parametrize(
    ("value", "expected"), [(0, "E005"), (-1, "E005"), ("5", "E004"), (True, "E004")]
)
def test_bad_heartbeat_interval_is_an_error(settings, value, expected):
    settings.JOBQUEUE = {"HEARTBEAT_INTERVAL": value}
    assert _ids(check_settings()) == [f"django_jobqueue.{expected}"]


NUMBER_KEYS = [name for name, key in conf.KEYS.items() if key.kind in (int, float)]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", NUMBER_KEYS)
def test_nan_and_infinity_are_errors_for_every_number_setting(settings, key, value):
    """NaN passed every check (NaN < minimum is False): POLL_INTERVAL NaN stopped polling,
    LEASE_SECONDS inf made every claim raise."""
    settings.JOBQUEUE = {key: value}
    messages = check_settings()
    assert _ids(messages) == ["django_jobqueue.E010"], key
    assert all(m.hint for m in messages)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MAX_ATTEMPTS", 2**31),
        ("RESULT_TTL", 2**31),
        ("RESULT_TTL", 400 * 86400),
        ("WAIT_TIMEOUT", 10**9),
        ("LEASE_SECONDS", 86401),
        ("POLL_INTERVAL", 3601),
        ("RETRY_BACKOFF", 10**300),
        ("RETRY_BACKOFF_MAX", 1e308),
        ("NOTIFY_TIMEOUT", 61),
        ("PREFETCH", 10**6),
        ("MAX_DEPTH", 900),
        ("MAX_ARGS_BYTES", 2**31),
        ("MAX_RESULT_BYTES", 2**31),
        ("MAX_ERROR_BYTES", 2**30),
        ("HEARTBEAT_INTERVAL", 10**6),
        ("TIME_LIMIT", 10**7),
    ],
)
def test_values_above_their_maximum_are_errors(settings, key, value):
    """MAX_ATTEMPTS or RESULT_TTL above int32 made every enqueue a DataError."""
    settings.JOBQUEUE = {key: value}
    (error,) = check_settings()
    assert error.id == "django_jobqueue.E011" and error.hint and "at most" in error.msg


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MAX_ATTEMPTS", 2**31 - 1),
        ("RESULT_TTL", 366 * 86400),
        ("LEASE_SECONDS", 86400),
        ("MAX_DEPTH", 200),
        ("MAX_DEPTH", 1),
        ("MAX_ARGS_BYTES", 1024),
        ("PREFETCH", 0),
        ("TIME_LIMIT", 7 * 86400),
        ("WAIT_TIMEOUT", 0.001),
        ("SHORT_JOB_SECONDS", 0),
    ],
)
def test_values_at_their_bounds_pass(settings, key, value):
    settings.JOBQUEUE = {key: value}
    assert check_settings() == []


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("MAX_DEPTH", 0, "E005"),
        ("MAX_DEPTH", 1.5, "E004"),
        ("MAX_ARGS_BYTES", 100, "E005"),
        ("MAX_ERROR_BYTES", "64k", "E004"),
    ],
)
def test_limits_below_their_minimum_or_of_the_wrong_type(settings, key, value, expected):
    settings.JOBQUEUE = {key: value}
    assert _ids(check_settings()) == [f"django_jobqueue.{expected}"]


@pytest.mark.parametrize(
    ("lease", "heartbeat", "expected"),
    [
        (30, 30, ["django_jobqueue.E012"]),
        (30, 45, ["django_jobqueue.E012"]),
        (30, 15.5, ["django_jobqueue.E012"]),
        (30, 15, []),
        (30, 10, []),
        (None, 20, ["django_jobqueue.E012"]),  # against the default lease of 30
        (None, None, []),
    ],
)
def test_heartbeat_must_be_at_most_half_the_lease(settings, lease, heartbeat, expected):
    """A heartbeat at or above the lease let leases expire under running jobs, which then
    ran several times at once."""
    settings.JOBQUEUE = {
        **({"LEASE_SECONDS": lease} if lease is not None else {}),
        **({"HEARTBEAT_INTERVAL": heartbeat} if heartbeat is not None else {}),
    }
    messages = check_settings()
    assert _ids(messages) == expected
    assert all("at most" in m.hint for m in messages)


def test_an_unknown_key_gets_a_did_you_mean_hint(settings):
    settings.JOBQUEUE = {"LEASE_SECS": 30, "ZZZ": 1}
    by_key = {m.msg: m.hint for m in check_settings()}
    assert by_key["Unknown key 'LEASE_SECS' in the JOBQUEUE setting."].startswith(
        "Did you mean 'LEASE_SECONDS'?"
    )
    assert not by_key["Unknown key 'ZZZ' in the JOBQUEUE setting."].startswith("Did you mean")


def test_a_non_str_key_is_reported_not_a_crash(settings):
    settings.JOBQUEUE = {1: 2, "POLL_INTERVAL": 1}
    assert _ids(check_settings()) == ["django_jobqueue.E003"]


def test_every_error_has_a_hint(settings):
    settings.JOBQUEUE = {
        "MAX_ATTEMPTS": "3",
        "POLL_INTERVAL": math.nan,
        "RESULT_TTL": 2**40,
        "HEARTBEAT_INTERVAL": 0,
        "WORKER_SYNCHRONOUS_COMMIT": "no",
        "DEFAULT_QUEUE": "a b",
        "OOPS": 1,
    }
    messages = check_settings()
    assert len(messages) == 7 and all(m.hint for m in messages)


@pytest.mark.django_db
def test_manage_py_check_reports_the_new_ids(settings):
    settings.JOBQUEUE = {"POLL_INTERVAL": math.nan, "LEASE_SECONDS": 10, "HEARTBEAT_INTERVAL": 10}
    with pytest.raises(SystemCheckError) as info:
        call_command("check", stdout=StringIO(), stderr=StringIO())
    assert "django_jobqueue.E010" in str(info.value) and "django_jobqueue.E012" in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("POLL_INTERVAL", math.nan),
        ("LEASE_SECONDS", math.inf),
        ("MAX_ATTEMPTS", 2**40),
        ("RETRY_BACKOFF_MAX", 1e308),
        ("MAX_DEPTH", "deep"),
        ("NOTIFY_TIMEOUT", -1),
        ("TIME_LIMIT", -5),
        ("TIME_LIMIT", 0),
        ("TIME_LIMIT", "abc"),
        ("EAGER", "yes"),
        ("DEFAULT_QUEUE", "has spaces"),
    ],
)
def test_at_run_time_a_value_that_cannot_work_falls_back_to_its_default(
    settings, caplog, key, value
):
    settings.JOBQUEUE = {key: value}
    assert conf.get(key) == conf.DEFAULTS[key]
    assert f"JOBQUEUE[{key!r}]" in caplog.text


def test_at_run_time_the_heartbeat_is_at_most_half_the_lease(settings):
    settings.JOBQUEUE = {"LEASE_SECONDS": 10, "HEARTBEAT_INTERVAL": 30}
    assert conf.heartbeat_interval() == 5
    settings.JOBQUEUE = {"LEASE_SECONDS": 10, "HEARTBEAT_INTERVAL": math.nan}
    assert conf.heartbeat_interval() == pytest.approx(10 / 3)


# -- limits per key ------------------------------------------------------------------------


def test_well_formed_limits_pass(settings):
    settings.JOBQUEUE = {
        "LIMITS": {"api": {"concurrency": 4, "rate": "100/m"}, "tenant:*": {"rate": "2/s"}}
    }
    assert check_limits() == []


@pytest.mark.parametrize(
    ("limits", "text"),
    [
        ({"api": {"rate": "100/min"}}, "rate '100/min' is not of the form"),
        ({"api": {"rate": "0/s"}}, "rate '0/s'"),
        ({"api": {"concurrency": 0}}, "'concurrency'] must be a whole number >= 1"),
        ({"api": {"concurrency": "4"}}, "must be a whole number"),
        ({"api": {"concurency": 4}}, "unknown keys ['concurency']"),
        ({"api": {}}, "sets neither"),
        ({"api": 4}, "must be a dict"),
        ({"*": {"concurrency": 1}}, "'*' may only end a key"),
        ([("api", {"concurrency": 1})], "must be a dict of key -> limits"),
    ],
)
def test_malformed_limits_are_errors(settings, limits, text):
    settings.JOBQUEUE = {"LIMITS": limits}
    messages = check_limits()
    assert _ids(messages) == ["django_jobqueue.E013"]
    assert text in messages[0].msg
    assert messages[0].hint


def test_every_malformed_entry_is_listed(settings):
    settings.JOBQUEUE = {
        "LIMITS": {"a": {"rate": "x"}, "b": {"concurrency": -1}, "c": {"rate": "1/s"}}
    }
    assert _ids(check_limits()) == ["django_jobqueue.E013", "django_jobqueue.E013"]


@pytest.mark.parametrize(
    ("caches", "text"),
    [
        ({"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}, "LocMem"),
        ({}, "not in CACHES"),
        ({"limits": {"BACKEND": "django.core.cache.backends.redis.RedisCache"}}, "redis.Redis"),
    ],
)
def test_limits_cache_must_be_a_django_redis_cache(settings, caches, text):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    settings.CACHES.update(caches)
    settings.JOBQUEUE = {
        "LIMITS_CACHE": "limits" if "limits" in caches or not caches else "default"
    }
    messages = check_limits()
    assert _ids(messages) == ["django_jobqueue.E014"]
    assert text in messages[0].msg
    assert "django_redis.cache.RedisCache" in messages[0].hint


def test_a_django_redis_limits_cache_passes(settings):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "limits": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://x:1/0"},
    }
    settings.JOBQUEUE = {"LIMITS_CACHE": "limits"}
    assert check_limits() == []


def test_a_job_limit_with_no_entry_is_an_error(settings):
    """The key had an entry when the job was decorated; the setting changed since."""
    settings.JOBQUEUE = {"LIMITS": {"check-key": {"concurrency": 1}}}

    def limited_for_checks():
        return None

    limited = job(name="tests.checks.limited", limit="check-key")(limited_for_checks)
    try:
        assert check_limits() == []
        settings.JOBQUEUE = {"LIMITS": {"other": {"concurrency": 1}}}
        messages = check_limits()
        assert _ids(messages) == ["django_jobqueue.E015"]
        assert "'tests.checks.limited' has limit='check-key'" in messages[0].msg
        settings.JOBQUEUE = {"LIMITS": {"check-*": {"concurrency": 1}}}
        assert check_limits() == []  # a pattern covers it
    finally:
        registry._jobs.pop(limited.name, None)


@pytest.mark.django_db
def test_manage_py_check_reports_a_bad_rate(settings):
    settings.JOBQUEUE = {"LIMITS": {"api": {"rate": "fast"}}}
    with pytest.raises(SystemCheckError, match=r"django_jobqueue\.E013"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


@pytest.fixture
def pooled(monkeypatch):
    """Adds a database "pooled" as a site behind PgBouncer declares it, with the options
    given (in place: overriding DATABASES is refused by Django's test signals); removed after
    the test. Returns the database's dict."""
    from django.conf import settings

    def add(**options):
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "site",
            "HOST": "127.0.0.1",
            "PORT": "6432",
            "DISABLE_SERVER_SIDE_CURSORS": True,
            "OPTIONS": options,
        }
        monkeypatch.setitem(settings.DATABASES, "pooled", database)
        return database

    return add


def test_pooled_database_with_client_side_binding_passes(pooled):
    from django_jobqueue.checks import check_pooler

    pooled(connect_timeout=3)
    assert check_pooler() == []


def test_pooled_database_with_server_side_binding_warns(pooled):
    from django_jobqueue.checks import check_pooler

    pooled(server_side_binding=True)
    [warning] = check_pooler()
    assert warning.id == "django_jobqueue.W030"
    assert "'pooled'" in warning.msg and "max_prepared_statements" in warning.hint


@pytest.mark.parametrize("startup", ["-c statement_timeout=5000", "-c=search_path=app"])
def test_pooled_database_with_session_parameters_warns(pooled, startup):
    from django_jobqueue.checks import check_pooler

    pooled(options=startup)
    assert _ids(check_pooler()) == ["django_jobqueue.W031"]


def test_server_side_binding_without_a_pooler_passes(pooled):
    from django_jobqueue.checks import check_pooler

    pooled(server_side_binding=True)["DISABLE_SERVER_SIDE_CURSORS"] = False
    assert check_pooler() == []


def test_pooler_warning_through_manage_py_check(pooled):
    pooled(server_side_binding=True)
    out = StringIO()
    call_command("check", stdout=out, stderr=out)
    assert "django_jobqueue.W030" in out.getvalue()
