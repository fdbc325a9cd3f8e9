"""Telling an engine that stopped under a job from the job's own end, and cleaning up after
it and after a launch that was given up.

An engine that restarts with live restore off stops its containers with SIGTERM, then
SIGKILL: to the worker, a job that died of a signal it did not send. Such an attempt is an
infrastructure failure (retried without counting against the job's retries) when the engine
that answers now did not see it die, or goes away within a short probe, or was lost while
the job ran.
"""

from __future__ import annotations

import logging
import threading
import time

from .exceptions import ExecutorConnectionError, ExecutorError
from .executors.base import BaseExecutor, ContainerState

__all__ = ["engine_goes_away", "killed_by_engine", "remove_named", "remove_once_back"]

log = logging.getLogger("container_manager.worker")

#: Exit codes of a container killed by SIGKILL or SIGTERM.
KILLED = frozenset({128 + 9, 128 + 15})
_PROBE_EVERY = 0.5  # seconds between engine probes after such a death
_REMOVE_PATIENCE = 120.0  # seconds to wait for a stopped engine to remove a container


def killed_by_engine(
    executor: BaseExecutor,
    container_id: str,
    state: ContainerState,
    *,
    engine_lost: bool,
    probe: float,
    stop: threading.Event,
) -> bool:
    """Whether the exited container was killed by its engine shutting down, not by the job
    itself: it died of SIGTERM or SIGKILL that the worker did not send, and the engine went
    away around then (``engine_lost``: the worker lost it while the job ran)."""
    if state.oom_killed or state.exit_code not in KILLED:
        return False
    if engine_lost:
        return True
    try:
        restarted = executor.engine_restarted(container_id, state.started_at, probe)
    except ExecutorError:
        return True
    return engine_goes_away(executor, probe, stop) if restarted is None else restarted


def engine_goes_away(executor: BaseExecutor, probe: float, stop: threading.Event) -> bool:
    """Whether the engine stops answering within ``probe`` seconds."""
    end = time.monotonic() + probe
    while time.monotonic() < end and not stop.is_set():
        try:
            if not executor.health_check():
                return True
        except ExecutorError:
            return True
        stop.wait(_PROBE_EVERY)
    return False


def remove_once_back(executor: BaseExecutor, container_id: str) -> None:
    """Remove the container of an attempt its engine ended, once the engine answers again
    (for up to _REMOVE_PATIENCE seconds; the reaper removes it after that)."""
    end, delay = time.monotonic() + _REMOVE_PATIENCE, 0.5
    while True:
        try:
            executor.discard(container_id)
            return
        except ExecutorConnectionError:
            if time.monotonic() + delay > end:
                log.info("container %s left to the reaper", container_id[:12])
                return
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        except ExecutorError as err:
            log.warning("container %s not removed: %s", container_id[:12], err)
            return


def remove_named(executor: BaseExecutor, name: str) -> None:
    """Remove the container a given-up launch may have made, found by its name."""
    try:
        container_id = executor.find_container(name)
        if container_id:
            executor.discard(container_id)
    except ExecutorError as err:
        log.info("container %s of a stuck launch not removed: %s", name, err)
