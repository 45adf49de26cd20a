"""The JOBQUEUE setting: defaults, overrides, and reset on change."""

from channels.layers import get_channel_layer
from django.apps import apps
from django.core.management import get_commands
from django.test import override_settings

from django_jobqueue import conf


def test_defaults_fill_what_the_user_leaves_out(settings):
    settings.JOBQUEUE = {"MAX_ATTEMPTS": 9}
    merged = conf.get_settings()
    assert merged["MAX_ATTEMPTS"] == 9
    assert merged["DEFAULT_QUEUE"] == "default" and merged["RESULT_TTL"] == 3600


def test_override_settings_is_seen_and_undone():
    before = conf.get("WAIT_TIMEOUT")
    with override_settings(JOBQUEUE={"WAIT_TIMEOUT": 2}):
        assert conf.get("WAIT_TIMEOUT") == 2
    assert conf.get("WAIT_TIMEOUT") == before


def test_heartbeat_defaults_to_a_third_of_the_lease(settings):
    settings.JOBQUEUE = {"LEASE_SECONDS": 30}
    assert conf.heartbeat_interval() == 10
    settings.JOBQUEUE = {"LEASE_SECONDS": 30, "HEARTBEAT_INTERVAL": 4}
    assert conf.heartbeat_interval() == 4


def test_channels_need_not_be_an_installed_app():
    """The tests run without "channels" in INSTALLED_APPS: the package is needed for its
    channel layers (in-memory or Redis, per the settings), not as an app, whose only gift
    would be a `runworker` command easily mistaken for `runjobworker`."""
    assert not apps.is_installed("channels")
    commands = get_commands()
    assert commands["runjobworker"] == "django_jobqueue" and "runworker" not in commands
    assert get_channel_layer() is not None
