"""A private registry for the tests: Debian's docker-registry with htpasswd auth on loopback
(``127.0.0.1:REGISTRY_PORT``, default 5555), started by ``scripts/ensure-registry.sh`` when
none answers there. When it cannot be had the test is skipped locally and FAILS under CI.

``private_image`` pushes the offline test image to it once per session, as
``127.0.0.1:PORT/cm-test/busybox:<session id>``, and afterwards removes the local tag it made.
The registry keeps the tag: sessions side by side push the same manifest, and deleting it (by
digest) would take every session's tag with it. ``pull_needed`` removes the local tag before a
test, so that the engine must really pull from the registry. Take the fixtures into a test
module by name.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SESSION_ID, _require

__all__ = ["REGISTRY", "PrivateImage", "private_image", "private_registry", "pull_needed"]

PORT = int(os.environ.get("REGISTRY_PORT", "5555"))
REGISTRY = f"127.0.0.1:{PORT}"
#: The test user of scripts/ensure-registry.sh: for this local test registry only.
USERNAME = "cmtest"
PASSWORD = "cm-test-registry-secret"
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ensure-registry.sh"


@dataclass(frozen=True)
class PrivateImage:
    """The test image as the private registry holds it."""

    registry: str
    repository: str
    tag: str
    username: str
    password: str = field(repr=False)

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"

    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}


@pytest.fixture(scope="session")
def private_registry() -> str:
    """The registry's URL (``http://127.0.0.1:PORT``), started by the script if need be."""
    try:
        done = subprocess.run(
            ["bash", str(SCRIPT)],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "REGISTRY_PORT": str(PORT)},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        _require(f"no private registry at {REGISTRY}: {err}")
    if done.returncode != 0:
        _require(f"no private registry at {REGISTRY}: {done.stderr.strip()[-500:]}")
    return done.stdout.strip().splitlines()[-1]


def _push(client: Any, image: PrivateImage) -> None:
    """Push ``image``; a push that reports no manifest digest fails with the answer."""
    lines = client.images.push(
        image.repository, tag=image.tag, auth_config=image.auth_config(), stream=True, decode=True
    )
    digest = ""
    for line in lines:
        if "error" in line:
            pytest.fail(f"push of {image.reference} failed: {line['error']}")
        digest = (line.get("aux") or {}).get("Digest", digest)
    if not digest:
        pytest.fail(f"push of {image.reference} reported no digest")


@pytest.fixture(scope="session")
def private_image(docker_client: Any, private_registry: str) -> Iterator[PrivateImage]:
    """The offline test image, pushed to the private registry for this session."""
    import docker

    from container_manager.testing.images import TEST_IMAGE

    image = PrivateImage(REGISTRY, f"{REGISTRY}/cm-test/busybox", SESSION_ID, USERNAME, PASSWORD)
    docker_client.images.get(TEST_IMAGE).tag(image.repository, image.tag)
    try:
        _push(docker_client, image)
        yield image
    finally:
        with suppress(docker.errors.NotFound):
            docker_client.images.remove(image.reference)


def is_local(client: Any, reference: str) -> bool:
    """Whether the engine has an image by that reference."""
    import docker

    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        return False
    return True


@pytest.fixture
def pull_needed(docker_client: Any, private_image: PrivateImage) -> Iterator[PrivateImage]:
    """The private image, not on the engine: running it takes a real pull. The tag a pull
    adds is removed again afterwards (the test image's own tag is untouched)."""
    import docker

    with suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(private_image.reference)
    assert not is_local(docker_client, private_image.reference)
    yield private_image
    with suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(private_image.reference)
