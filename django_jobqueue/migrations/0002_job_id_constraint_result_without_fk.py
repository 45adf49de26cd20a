"""job_id unique through the named constraint ``djq_job_id``; results without a database FK.

On PostgreSQL the unique constraint the table already has is renamed, not rebuilt: building
a new unique index would hold an exclusive lock on the job table (stopping producers and
workers) for as long as the build takes on a large table. Its ``varchar_pattern_ops``
index (for ``LIKE``, never used) is dropped. Other databases go through the schema editor.
"""

from typing import Any

import django.db.models.deletion
from django.db import migrations, models

NAME = "djq_job_id"


def _job_id_fields(apps: Any) -> tuple[Any, Any, Any]:
    job = apps.get_model("django_jobqueue", "Job")
    old = job._meta.get_field("job_id")
    new = models.CharField("job id", max_length=old.max_length)
    new.set_attributes_from_name("job_id")
    new.model = job
    return job, old, new


def forwards(apps: Any, schema_editor: Any) -> None:
    job, old, new = _job_id_fields(apps)
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        schema_editor.alter_field(job, old, new)
        schema_editor.add_constraint(job, models.UniqueConstraint(fields=["job_id"], name=NAME))
        return
    table = job._meta.db_table
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    on_job_id = {
        name: info for name, info in constraints.items() if info["columns"] == ["job_id"]
    }
    unique = [name for name, info in on_job_id.items() if info["unique"] and not info["index"]]
    like = [  # the varchar_pattern_ops index Django makes beside a unique CharField
        name
        for name, info in on_job_id.items()
        if info["index"] and not info["unique"] and name.endswith("_like")
    ]
    qn = schema_editor.quote_name
    if len(unique) != 1:  # not the shape 0001 made: let the schema editor do it
        schema_editor.alter_field(job, old, new)
        schema_editor.add_constraint(job, models.UniqueConstraint(fields=["job_id"], name=NAME))
        return
    schema_editor.execute(
        f"ALTER TABLE {qn(table)} RENAME CONSTRAINT {qn(unique[0])} TO {qn(NAME)}"
    )
    for name in like:
        schema_editor.execute(f"DROP INDEX IF EXISTS {qn(name)}")


def backwards(apps: Any, schema_editor: Any) -> None:
    job, old, new = _job_id_fields(apps)
    schema_editor.remove_constraint(job, models.UniqueConstraint(fields=["job_id"], name=NAME))
    schema_editor.alter_field(job, new, old)


class Migration(migrations.Migration):
    dependencies = [
        ("django_jobqueue", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="job",
                    name="job_id",
                    field=models.CharField(max_length=255, verbose_name="job id"),
                ),
                migrations.AddConstraint(
                    model_name="job",
                    constraint=models.UniqueConstraint(fields=("job_id",), name=NAME),
                ),
            ],
            database_operations=[migrations.RunPython(forwards, backwards)],
        ),
        migrations.AlterField(
            model_name="jobresult",
            name="job",
            field=models.OneToOneField(
                db_constraint=False,
                on_delete=django.db.models.deletion.CASCADE,
                primary_key=True,
                related_name="outcome",
                serialize=False,
                to="django_jobqueue.job",
            ),
        ),
    ]
