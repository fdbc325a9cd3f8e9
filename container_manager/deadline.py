"""Engine calls with a deadline: a call that hangs (an engine stuck on a container create,
seen with Docker 20.10) is let go of when its deadline passes, and whatever it returns late
is handed to a clean-up instead of being lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from .exceptions import ContainerManagerError

__all__ = ["CallTimedOut", "call_before"]

T = TypeVar("T")


class CallTimedOut(ContainerManagerError):
    """The call did not return before its deadline; it goes on in its own thread."""


class _Call(Generic[T]):
    def __init__(self, call: Callable[[], T], late: Callable[[T], None]) -> None:
        self.call = call
        self.late = late
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.given_up = False
        self.result: T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            result = self.call()
        except BaseException as err:  # noqa: BLE001 (re-raised in the caller's thread)
            self.error = err
            self.done.set()
            return
        with self.lock:
            self.result = result
            self.done.set()
            late = self.given_up
        if late:
            self.late(result)


def call_before(
    call: Callable[[], T],
    deadline: float,
    *,
    stop: threading.Event,
    late: Callable[[T], None],
    name: str = "engine-call",
) -> T | None:
    """``call()`` in a thread of its own; its result, its exception re-raised, or
    CallTimedOut once ``time.monotonic()`` passes ``deadline``. None when ``stop`` was set
    first. A result that arrives after the caller gave up goes to ``late(result)``."""
    pending = _Call(call, late)
    threading.Thread(target=pending.run, name=name, daemon=True).start()
    while not pending.done.wait(min(max(deadline - time.monotonic(), 0.0), 0.5)):
        if stop.is_set() or time.monotonic() >= deadline:
            with pending.lock:
                if not pending.done.is_set():
                    pending.given_up = True
                    if stop.is_set():
                        return None
                    raise CallTimedOut("The call did not return before its deadline.")
            break
    if pending.error is not None:
        raise pending.error
    return pending.result
