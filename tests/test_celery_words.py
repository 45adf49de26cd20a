"""Celery's words at the call site: the error names what this queue calls it."""

from __future__ import annotations

import pytest

from django_jobqueue import InvalidJobError, job
from tests.testapp.jobs import add


@pytest.mark.parametrize(
    ("attribute", "ours"), [("delay", "enqueue"), ("apply_async", r"\.using\(<options>\)")]
)
def test_celery_verbs_raise_an_attribute_error_naming_ours(attribute, ours):
    with pytest.raises(AttributeError, match=rf"Celery's {attribute}; here: {ours}") as info:
        getattr(add, attribute)(1, 2)
    assert info.value.name == attribute


def test_a_misspelt_attribute_gets_a_did_you_mean():
    with pytest.raises(AttributeError, match=r"'enqeue' \(did you mean 'enqueue'\?\)"):
        add.enqeue(1, 2)  # type: ignore[attr-defined]
    assert not hasattr(add, "delay")


@pytest.mark.parametrize(
    ("option", "ours"),
    [("max_retries", "max_attempts"), ("bind", "takes_context=True"), ("queu", "'queue'")],
)
def test_job_options_named_as_in_celery_raise_a_type_error_naming_ours(option, ours):
    with pytest.raises(TypeError, match=rf"unexpected keyword argument '{option}'.*{ours}"):
        job(**{option: True})


@pytest.mark.parametrize(("option", "ours"), [("countdown", "run_after"), ("eta", "run_after")])
def test_using_options_named_as_in_celery_name_ours(option, ours):
    with pytest.raises(InvalidJobError, match=rf"Celery's {option}; here: .using\({ours}="):
        add.using(**{option: 5})


@pytest.mark.django_db
def test_a_celery_option_passed_to_enqueue_names_ours_and_writes_nothing():
    from django_jobqueue.models import Job

    with pytest.raises(InvalidJobError, match=r"'countdown' \(Celery's countdown; here: .using"):
        add.enqueue(1, 2, countdown=5)
    assert not Job.objects.exists()
