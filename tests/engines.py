"""Dedicated Docker engines that tests start and stop: their own data root, exec root,
pid file and socket (or TCP port), with no bridge network. Only what they create is removed."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import docker

# One directory per test process: runs side by side never share an engine's state or socket.
ROOT = Path(os.environ.get("CM_TEST_ENGINES_DIR", f"/tmp/cme-{os.getpid()}"))


def started_engine(name: str, **options: Any) -> DedicatedEngine:
    """A started DedicatedEngine with the offline test image built on it. When it cannot start,
    the test is skipped locally and FAILS under CI."""
    import pytest

    from container_manager.testing.images import build_busybox_image

    engine = DedicatedEngine(name, **options)
    try:
        engine.start()
    except RuntimeError as err:
        if os.environ.get("CI"):
            pytest.fail(str(err))
        pytest.skip(str(err))
    with engine.client() as client:
        build_busybox_image(client)
    return engine


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port nothing listens on now, below 49152 (Swarm's data path needs that)."""
    for _ in range(200):
        port = random.randint(20000, 49151)
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port found")


class DedicatedEngine:
    """A second dockerd beside the main one. ``extra`` adds dockerd flags (e.g. TLS)."""

    def __init__(self, name: str, *, live_restore: bool = False, extra: list[str] | None = None):
        self.dir = ROOT / name
        self.socket = self.dir / "d.sock"
        self.url = f"unix://{self.socket}"
        self.live_restore = live_restore
        self.extra = list(extra or [])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        if shutil.which("dockerd") is None:
            raise RuntimeError("dockerd is not installed (run scripts/ensure-docker.sh)")
        for sub in ("data", "exec"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        flags = [
            "dockerd",
            f"--data-root={self.dir / 'data'}",
            f"--exec-root={self.dir / 'exec'}",
            f"--pidfile={self.dir / 'd.pid'}",
            f"--host={self.url}",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            *(["--live-restore"] if self.live_restore else []),
            *self.extra,
        ]
        log = (self.dir / "dockerd.log").open("ab")
        self.process = subprocess.Popen(flags, stdout=log, stderr=log, start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited: see {self.dir / 'dockerd.log'}")
            try:
                with self.client(timeout=2) as client:
                    client.ping()
                    return
            except docker.errors.DockerException:
                time.sleep(0.2)
        raise RuntimeError(f"dockerd did not answer in {timeout}s: see {self.dir / 'dockerd.log'}")

    def client(self, timeout: int = 30) -> Any:
        """A closing context around an SDK client for this engine."""
        return closing(docker.DockerClient(base_url=self.url, timeout=timeout))

    def stop(self) -> None:
        """Stop dockerd (with live restore, its containers keep running)."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def destroy(self) -> None:
        """Remove every container of this engine (all are the tests'), stop it, and unmount
        and delete its directories."""
        if self.process is not None:
            try:
                with self.client() as client:
                    for container in client.containers.list(all=True):
                        container.remove(force=True)
            except docker.errors.DockerException:
                pass
        self.stop()
        mounts = Path("/proc/mounts").read_text().split()
        for mount in sorted({m for m in mounts if m.startswith(str(self.dir))}, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        with suppress(OSError):  # this process's folder of engines, once it is empty
            self.dir.parent.rmdir()
