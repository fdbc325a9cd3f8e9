"""A PostgreSQL server of the test's own (its data directory, its port), for tests that stop
and restart the database: never the machine's shared server.

The binaries are looked up in PG_BIN, then ``pg_config --bindir``, then the usual Debian
place. As root (a container), the server runs as the ``postgres`` user, as initdb demands.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
_DEBIAN_BIN = "/usr/lib/postgresql/15/bin"


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when there is none."""
    candidates = [os.environ.get("PG_BIN", "")]
    if pg_config := shutil.which("pg_config"):
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidates.append(result.stdout.strip())
    candidates.append(_DEBIAN_BIN)
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivatePostgres:
    """initdb into ``root``, then start, stop and restart with pg_ctl (trust auth, no fsync)."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0

    def _run(self, program: str, *args: str, timeout: float = 60) -> None:
        command = [str(self.bindir / program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}")

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _pg_ctl(self, action: str, *args: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "server.log")
        self._run("pg_ctl", action, "-D", str(self.data), "-l", log, "-o", options, "-w", *args)

    def start(self) -> None:
        self._pg_ctl("start")

    def restart_fast(self) -> None:
        """``pg_ctl restart -m fast``: every session is terminated, the server comes back."""
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")

    def destroy(self) -> None:
        """Stop the server (if it runs) and remove its directory."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True
        )

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database (optionally a copy of ``template``); its URL."""
        with self.connect() as admin:
            suffix = f" TEMPLATE {template}" if template else ""
            admin.execute(f"CREATE DATABASE {name}{suffix}")
        return self.url(name)


def django_env(url: str, settings: dict[str, Any] | None = None) -> dict[str, str]:
    """The environment of a ``manage.py`` process on the database at ``url``."""
    import json

    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "tests.worker_settings",
        "CM_TEST_SETTINGS": json.dumps(settings or {}),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("CM_TEST_DB_NAME", None)
    return env


def manage(url: str, *args: str, settings: dict[str, Any] | None = None) -> str:
    """Run ``manage.py ARGS`` on the database at ``url`` to its end; its output."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=django_env(url, settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)}: {result.stdout}{result.stderr}")
    return result.stdout


def worker(
    url: str, log: Path, *args: str, settings: dict[str, Any] | None = None
) -> subprocess.Popen[bytes]:
    """``manage.py process_container_jobs -v 2 ARGS`` on ``url``, its output into ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "process_container_jobs", "-v", "2", *args],
            env=django_env(url, settings),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
