"""Build a tiny offline test image: ``FROM scratch`` plus a static busybox.

No registry is needed: the build context is made in memory from the host's static busybox
(Debian's ``busybox-static`` puts it at ``/bin/busybox``).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

__all__ = ["TEST_IMAGE", "build_busybox_image"]

TEST_IMAGE = "container-jobs/busybox:latest"

_DOCKERFILE = b"""FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
CMD ["sh"]
"""


def _context(busybox: Path) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(_DOCKERFILE)
        tar.addfile(info, io.BytesIO(_DOCKERFILE))
        tar.add(str(busybox), arcname="busybox")
    buffer.seek(0)
    return buffer


def build_busybox_image(
    client: Any,
    tag: str = TEST_IMAGE,
    busybox: str | Path = "/bin/busybox",
    *,
    rebuild: bool = False,
) -> str:
    """Build ``tag`` on the engine behind ``client`` (a ``docker.DockerClient``) unless it is
    there already; return the tag."""
    import docker

    if not rebuild:
        try:
            client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
    path = Path(busybox)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: install a static busybox (busybox-static)")
    client.images.build(fileobj=_context(path), custom_context=True, tag=tag, rm=True, pull=False)
    return tag


if (
    __name__ == "__main__"
):  # python -m container_manager.testing.images [unix:///var/run/docker.sock]
    import sys

    import docker

    url = sys.argv[1] if len(sys.argv) > 1 else "unix:///var/run/docker.sock"
    print(build_busybox_image(docker.DockerClient(base_url=url)))
