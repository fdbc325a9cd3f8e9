"""Settings of bench/tasks.py and of the two workers it starts: the demo project's, with the
container backend ("default") and django-tasks-db's database backend ("db") side by side."""

import os

from demo.settings import *  # noqa: F403
from demo.settings import CONTAINER_MANAGER, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django_tasks_db"]
TASKS = {
    "default": {
        "BACKEND": "container_manager.tasks.ContainerTaskBackend",
        "OPTIONS": {
            "image": os.environ.get("BENCH_TASK_IMAGE", "unset"),
            "host": "bench",
            "command": ["python3", "/app/manage.py"],
        },
    },
    "db": {"BACKEND": "django_tasks_db.DatabaseBackend"},
}
CONTAINER_MANAGER = {
    **CONTAINER_MANAGER,
    "CONTAINER_LABELS": {"container_manager.bench": os.environ.get("BENCH_RUN_ID", "tasks")},
}
