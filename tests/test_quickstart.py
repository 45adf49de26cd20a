"""docs/quickstart.md, followed as a new user would, on a project that this Django's
``startproject`` writes: each ``# settings.py`` block that applies to this Django version
(blocks marked "(Django X and Y)" apply to those only; the Redis one needs a server: left
out), then ``check``, ``migrate``, both jobs of the page enqueued and run by a real worker."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import django
import pytest

from tests.conftest import ROOT

QUICKSTART = (ROOT / "docs" / "quickstart.md").read_text()


def _block(first_line: str) -> str:
    match = re.search(rf"```python\n({re.escape(first_line)}\n.*?)```", QUICKSTART, re.S)
    assert match, f"no python block starting {first_line!r} in docs/quickstart.md"
    return match.group(1)


def _settings_blocks() -> list[str]:
    """The settings the page tells a user of this Django version to add."""
    version = f"{django.VERSION[0]}.{django.VERSION[1]}"
    blocks = []
    for block in re.findall(r"```python\n *(# settings\.py.*?)```", QUICKSTART, re.S):
        header = block.splitlines()[0]
        versions = re.findall(r"\d+\.\d+", header)
        if (versions and version not in versions) or "CHANNEL_LAYERS" in block:
            continue
        if "INSTALLED_APPS" in block:
            apps = re.findall(r'"([\w.]+)"', block)
            blocks.append(f"INSTALLED_APPS = [*INSTALLED_APPS, *{apps!r}]")
        else:
            blocks.append("\n".join(line.strip() for line in block.splitlines()))
    return blocks


@pytest.mark.subprocess
def test_the_quickstart_works_on_a_fresh_project(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "mysite.settings"})

    def run(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    run("-m", "django", "startproject", "mysite", ".")
    run("manage.py", "startapp", "myapp")
    (tmp_path / "myapp" / "jobs.py").write_text(_block("# myapp/jobs.py"))
    settings = tmp_path / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + "\n" + "\n\n".join(_settings_blocks()) + "\n")
    run("manage.py", "check")
    run("manage.py", "migrate", "-v", "0")
    run(
        "manage.py", "shell", "-v", "0", "-c",
        "from django.contrib.auth.models import User\n"
        "from myapp.jobs import add, send_welcome_email\n"
        "add.using(job_id='add').enqueue(1, 2)\n"
        "user = User.objects.create_user('new', 'new@example.com')\n"
        "send_welcome_email.using(job_id='mail').enqueue(user.pk)",
    )  # fmt: skip
    out = run("manage.py", "runjobworker", "--burst")
    assert "Subject: Welcome" in out  # printed, not sent: no SMTP server needed
    assert "outcome=completed" in out and "outcome=failed" not in out
    done = run(
        "manage.py", "shell", "-v", "0", "-c",
        "from django_jobqueue import get_job\n"
        "print([(get_job(i).status, get_job(i).result) for i in ('add', 'mail')])",
    )  # fmt: skip
    assert "[('completed', 3), ('completed', None)]" in done
