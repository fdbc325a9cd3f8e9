"""What watches a running container beside its job's thread: a sampler of its resource
figures and a reader that follows its output as it is written."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from .exceptions import ExecutorError
from .executors.base import BaseExecutor
from .output import OutputCollection

__all__ = ["Figures", "Follower", "Sampler"]

log = logging.getLogger("container_manager.worker")


@dataclass
class Figures:
    peak_memory: int | None = None
    cpu_seconds: float | None = None

    def add(self, usage: dict[str, Any]) -> None:
        peak = int(usage.get("memory_peak") or usage.get("memory_usage") or 0)
        if peak:
            self.peak_memory = max(self.peak_memory or 0, peak)
        if usage.get("cpu_usage"):
            self.cpu_seconds = float(usage["cpu_usage"])


class Sampler(threading.Thread):
    """Samples a running container's resource figures every ``interval`` seconds, off the
    job's thread: a stats call can take a second, and must never delay noticing the exit."""

    def __init__(self, executor: BaseExecutor, container_id: str, interval: float) -> None:
        super().__init__(name=f"stats-{container_id[:12]}", daemon=True)
        self.executor = executor
        self.container_id = container_id
        self.interval = interval
        self.figures = Figures()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.figures.add(self.executor.get_resource_usage(self.container_id))
            except ExecutorError as err:
                log.debug("container=%s no stats: %s", self.container_id[:12], err)


class Follower(threading.Thread):
    """Reads a running container's output as it is written (the engine's log of it is
    capped: what the app keeps must be read before the engine drops it), into an
    :class:`OutputCollection` the job's thread reads the live tail from, and harvests."""

    def __init__(self, executor: BaseExecutor, container_id: str, output: OutputCollection) -> None:
        super().__init__(name=f"output-{container_id[:12]}", daemon=True)
        self.executor = executor
        self.container_id = container_id
        self.output = output
        #: Whether the whole output was read: the container exited and its log ended.
        self.complete = False

    def run(self) -> None:
        try:
            for stream, chunk in self.executor.follow_outputs(self.container_id):
                self.output.write(stream, chunk)
        except ExecutorError as err:
            log.info("container=%s output not followed to its end: %s", self.container_id[:12],
                     err)  # fmt: skip
        else:
            self.complete = True
