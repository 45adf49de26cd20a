"""The JOBQUEUE setting: defaults, overrides, and reset on change."""

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
