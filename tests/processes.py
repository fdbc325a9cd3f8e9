"""Start real worker processes against the test database."""

from __future__ import annotations

import json
import os
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
