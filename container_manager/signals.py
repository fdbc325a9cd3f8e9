"""Django signals for integrators. Each is sent with ``sender=ContainerJob`` and ``job=``.

- ``job_queued``: a job was submitted (sent after the transaction commits).
- ``job_started``: its container started (``container_id=``).
- ``job_finished``: it reached a terminal status (``status=``, a JobStatus).

Receivers run in the worker's job thread: keep them short, and do not raise (an exception
is logged and the worker goes on)."""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

__all__ = ["job_finished", "job_queued", "job_started", "send"]

job_queued = Signal()
job_started = Signal()
job_finished = Signal()

log = logging.getLogger("container_manager.signals")


def send(signal: Signal, job: Any, **kwargs: Any) -> None:
    """Send ``signal`` robustly: a failing receiver is logged, never propagated. Django logs
    its traceback (logger ``django.dispatch``); this adds the job it failed for."""
    for receiver, result in signal.send_robust(sender=type(job), job=job, **kwargs):
        if isinstance(result, Exception):
            log.error("signal receiver %r failed for job=%s: %r", receiver, job.pk, result)
