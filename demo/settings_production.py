"""The demo project as it would be deployed: ``manage.py check --deploy`` is clean with these
settings (DJANGO_SECRET_KEY, DJANGO_ALLOWED_HOSTS and CONTAINER_MANAGER_METRICS_TOKEN from the
environment; HTTPS only)."""

from __future__ import annotations

import os

from .settings import *  # noqa: F403
from .settings import CONTAINER_MANAGER

DEBUG = False
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h]
SECURE_SSL_REDIRECT = True
SECURE_HSTS_SECONDS = 31_536_000
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
X_FRAME_OPTIONS = "DENY"
CONTAINER_MANAGER = {
    **CONTAINER_MANAGER,
    "EXECUTORS": {},  # no fake engine in production
    "METRICS_TOKEN": os.environ.get("CONTAINER_MANAGER_METRICS_TOKEN") or None,
}
