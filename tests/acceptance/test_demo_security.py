"""The demo project is safe to expose: DEBUG off unless asked for, a secret key of its own
per checkout, clickjacking protection, and ``check --deploy`` clean with the production
settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def setting(name: str, **env: str) -> str:
    result = manage("shell", "-c", f"from django.conf import settings; print(settings.{name})",
                    **env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]  # after shell's auto-import notice


def test_debug_is_off_unless_asked_for():
    assert setting("DEBUG") == "False"
    assert setting("DEBUG", DJANGO_DEBUG="1") == "True"


def test_the_secret_key_comes_from_the_environment_or_is_made_once_per_checkout():
    assert setting("SECRET_KEY", DJANGO_SECRET_KEY="from-the-environment") == "from-the-environment"
    first, second = setting("SECRET_KEY"), setting("SECRET_KEY")
    assert first == second and len(first) >= 50
    assert first != "demo-only-not-secret"
    key_file = ROOT / ".secret_key"
    assert key_file.read_text().strip() == first
    assert key_file.stat().st_mode & 0o077 == 0, "readable by its owner only"


def test_clickjacking_protection_is_on():
    assert "XFrameOptionsMiddleware" in setting("MIDDLEWARE")


def test_check_deploy_is_clean_with_the_production_settings():
    env = {
        "DJANGO_SECRET_KEY": "x" * 20 + "-production-key-with-enough-variety-0123456789",
        "DJANGO_ALLOWED_HOSTS": "jobs.example.com",
        "CONTAINER_MANAGER_METRICS_TOKEN": "a-metrics-token",
    }
    result = manage("check", "--deploy", "--fail-level", "WARNING",
                    "--settings", "demo.settings_production", **env)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    open_metrics = manage("check", "--deploy", "--settings", "demo.settings_production",
                          **{**env, "CONTAINER_MANAGER_METRICS_TOKEN": ""})  # fmt: skip
    assert "container_manager.W004" in open_metrics.stdout + open_metrics.stderr
