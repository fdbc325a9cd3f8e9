"""The Django Tasks backend: every enqueued ``@task`` call runs in its own container.

``TASKS = {"default": {"BACKEND": "container_manager.tasks.ContainerTaskBackend", ...}}``;
see :mod:`container_manager.tasks.backend` for its OPTIONS. Works with ``django.tasks``
(Django 6.0+) and with the ``django-tasks`` backport on Django 5.2 (:mod:`.compat`).

The backend is imported on first use, so that this package costs nothing (and needs no
Tasks framework) in a project that does not configure it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import ContainerTaskBackend

__all__ = ["ContainerTaskBackend"]


def __getattr__(name: str) -> Any:
    if name == "ContainerTaskBackend":
        from .backend import ContainerTaskBackend

        return ContainerTaskBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
