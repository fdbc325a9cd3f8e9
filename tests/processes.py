"""Start real worker processes against the test database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def worker_process(*args: str, settings: dict[str, Any] | None = None) -> subprocess.Popen[bytes]:
    """``manage.py process_container_jobs ARGS`` in a new process on the test database."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.worker_settings",
        "CM_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
        "CM_TEST_SETTINGS": json.dumps(settings or {}),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "process_container_jobs", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def worker_killed_mid_run(running: int, settings: dict[str, Any]) -> subprocess.Popen[bytes]:
    """A worker process of ``--concurrency running``, SIGKILLed once ``running`` jobs run
    (it leaves them for another worker to adopt); the dead process."""
    from container_manager.models import ContainerJob, JobStatus
    from tests.conftest import until

    worker = worker_process("--concurrency", str(running), settings=settings)
    try:
        until(
            lambda: ContainerJob.objects.filter(status=JobStatus.RUNNING).count() == running,
            timeout=60,
        )
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    return worker
