"""System checks, by id and through ``manage.py check``."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from django_jobqueue.checks import check_channel_layer, check_settings


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
