"""System checks, by id and through ``manage.py check``."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from django_jobqueue import job
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
    assert error.id == "django_jobqueue.E001"
    assert "MAX_ATEMPTS" in error.msg and "MAX_ATTEMPTS" in error.hint


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MAX_ATTEMPTS", 0),
        ("MAX_ATTEMPTS", "3"),
        ("LEASE_SECONDS", True),
        ("POLL_INTERVAL", -1),
        ("DEFAULT_QUEUE", "has spaces"),
    ],
)
def test_bad_values_are_errors(settings, key, value):
    settings.JOBQUEUE = {key: value}
    assert _ids(check_settings()) == ["django_jobqueue.E001"]


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
    with pytest.raises(SystemCheckError, match=r"django_jobqueue\.E001"):
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


@pytest.mark.parametrize("value", [0, -1, "5", True])
def test_bad_heartbeat_interval_is_an_error(settings, value):
    settings.JOBQUEUE = {"HEARTBEAT_INTERVAL": value}
    assert _ids(check_settings()) == ["django_jobqueue.E001"]


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
    assert _ids(messages) == ["django_jobqueue.E010"]
    assert text in messages[0].msg
    assert messages[0].hint


def test_every_malformed_entry_is_listed(settings):
    settings.JOBQUEUE = {
        "LIMITS": {"a": {"rate": "x"}, "b": {"concurrency": -1}, "c": {"rate": "1/s"}}
    }
    assert _ids(check_limits()) == ["django_jobqueue.E010", "django_jobqueue.E010"]


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
    assert _ids(messages) == ["django_jobqueue.E011"]
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
        assert _ids(messages) == ["django_jobqueue.E012"]
        assert "'tests.checks.limited' has limit='check-key'" in messages[0].msg
        settings.JOBQUEUE = {"LIMITS": {"check-*": {"concurrency": 1}}}
        assert check_limits() == []  # a pattern covers it
    finally:
        registry._jobs.pop(limited.name, None)


@pytest.mark.django_db
def test_manage_py_check_reports_a_bad_rate(settings):
    settings.JOBQUEUE = {"LIMITS": {"api": {"rate": "fast"}}}
    with pytest.raises(SystemCheckError, match=r"django_jobqueue\.E010"):
        call_command("check", stdout=StringIO(), stderr=StringIO())
