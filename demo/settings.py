"""Settings of the demo project: SQLite by default, PostgreSQL when DATABASE_URL says so."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

BASE_DIR = Path(__file__).resolve().parent.parent


def _secret_key() -> str:
    """DJANGO_SECRET_KEY, or a key generated once for this checkout (``.secret_key``, mode
    0600, ignored by git): never a key that is the same everywhere."""
    if key := os.environ.get("DJANGO_SECRET_KEY"):
        return key
    path = BASE_DIR / ".secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        from django.core.management.utils import get_random_secret_key

        key = get_random_secret_key()
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(key)
        return key


SECRET_KEY = _secret_key()
#: Off unless asked for (DJANGO_DEBUG=1): a debug page shows settings and tracebacks.
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "container_manager",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "demo.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "static/"
USE_TZ = True
TIME_ZONE = "UTC"


def database_from_url(url: str) -> dict[str, Any]:
    """postgres://user:pass@host:port/name -> a DATABASES entry."""
    parts = urlparse(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ValueError(f"DATABASE_URL: unsupported scheme {parts.scheme!r} (use postgres://)")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        # Workers are long-lived: keep connections (a broken one is replaced after an error).
        "CONN_MAX_AGE": 300,
        # One test database per test process, so that test runs side by side never share it.
        "TEST": {
            "NAME": os.environ.get("PG_TEST_NAME") or f"test_{parts.path.lstrip('/')}_{os.getpid()}"
        },
    }


if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
            # A file, not memory: worker threads and worker processes share the test database.
            # One per test process, so that test runs side by side never share it.
            "TEST": {
                "NAME": os.environ.get(
                    "SQLITE_TEST_PATH",
                    os.path.join(tempfile.gettempdir(), f"cm-test-{os.getpid()}.sqlite3"),
                )
            },
            # A worker and the admin write side by side: wait for the lock instead of failing,
            # take the write lock up front, and let readers read while a writer writes.
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The engines `make engine` starts have no bridge network (--bridge=none): jobs get loopback
# only, and say so explicitly, which also keeps the engine from leaking a network sandbox
# per container (moby/moby#46583). Set CONTAINER_MANAGER_NETWORK_MODE= (empty) for the
# engine's default network.
CONTAINER_MANAGER: dict[str, Any] = {
    "NETWORK_MODE": os.environ.get("CONTAINER_MANAGER_NETWORK_MODE", "none") or None,
    # The in-package fake engine, for the tests and the demo; never register it in production.
    "EXECUTORS": {"fake": "container_manager.executors.fake.FakeExecutor"},
    # Ended jobs' rows (and attempts, stored output) go after 30 days: a queue running a job
    # a second keeps about 2.6 million rows then (docs/explanation/reaper.md).
    "JOB_RETENTION_DAYS": int(os.environ.get("CONTAINER_MANAGER_RETENTION_DAYS", "30")),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "container_manager": {
            "handlers": ["console"],
            "level": os.environ.get("CONTAINER_MANAGER_LOG_LEVEL", "WARNING"),
        }
    },
}
