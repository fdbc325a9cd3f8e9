"""The kubernetes executor's one connection to its cluster: the client made on first use,
the one place the client's errors are translated into the app's error tree, every call with
its deadline, and how a Job's pod is read: listed, then watched (no polling sleeps), and its
log read or followed."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from ..exceptions import (
    ContainerManagerError,
    ContainerNotFoundError,
    ExecutorConnectionError,
    ExecutorError,
    PermanentLaunchError,
    SpecRefusedError,
)
from . import kubernetes_pods as pod_state
from . import kubernetes_spec
from .kubernetes_host import ClusterTarget, configuration, sdk
from .kubernetes_pods import Obj

__all__ = ["FOLLOW_IDLE", "READ_SIZE", "ClusterApi", "chunks", "lines", "release"]

READ_SIZE = 64 * 1024
_WATCH_SLICE = 30.0  # seconds per watch request at most
#: Seconds a followed log may stay silent (the client takes no read timeout of None): the
#: output of a job silent longer is read again after its end.
FOLLOW_IDLE = 24 * 3600.0


class ClusterApi:
    """One namespace of one cluster, through the official client: ``call`` answers JSON as
    dicts, and raises only the app's errors."""

    def __init__(self, target: ClusterTarget, url: str, timeout: float, pool_size: int) -> None:
        self.target = target
        self.namespace = target.namespace
        self.url = url
        self.timeout = timeout
        self.pool_size = pool_size
        self._api: Any = None
        self._lock = threading.Lock()

    @property
    def api(self) -> Any:
        """The client's ApiClient for this cluster, made on first use."""
        if self._api is None:
            with self._lock:
                if self._api is None:
                    self._api = sdk().client.ApiClient(configuration(self.target, self.pool_size))
        return self._api

    def close(self) -> None:
        if self._api is not None:
            with suppress(Exception):
                self._api.close()
            self._api = None

    @property
    def batch(self) -> Any:
        return sdk().client.BatchV1Api(self.api)

    @property
    def core(self) -> Any:
        return sdk().client.CoreV1Api(self.api)

    # ---- the one translation point ----------------------------------------------------

    @contextmanager
    def translating(self, action: str) -> Iterator[None]:
        """Translate anything the client raises while doing ``action`` into our error tree."""
        try:
            yield
        except ContainerManagerError:
            raise
        except Exception as err:  # the SDK edge: sorted by what it is
            raise self._translate(action, err) from err

    def _translate(self, action: str, err: Exception) -> ExecutorError:
        status = getattr(err, "status", None)
        if isinstance(status, int) and status and hasattr(err, "body"):
            message = f"{action}: {api_message(err)}"
            kind: type[ExecutorError] = ExecutorError
            if status == 404:
                kind = ContainerNotFoundError
            elif status in (400, 422):
                kind = SpecRefusedError
            elif status == 403:
                kind = PermanentLaunchError
            return kind(message, status_code=status)
        return ExecutorConnectionError(
            f"{action}: cannot reach the cluster ({self.url}): {err or type(err).__name__}"
        )

    def call(self, action: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
        """``method(*args, **kwargs)`` with the deadline, its JSON answer as a dict."""
        with self.translating(action):
            response = method(
                *args, _preload_content=False, _request_timeout=self.timeout, **kwargs
            )
            try:
                data = response.data
            finally:
                release(response)
            return dict(json.loads(data)) if data else {}

    # ---- a Job's pod ------------------------------------------------------------------

    def read_job(self, name: str) -> Obj:
        return self.call(f"Read job {name}", self.batch.read_namespaced_job, name, self.namespace)

    def job_pods(self, name: str) -> tuple[list[Obj], str]:
        """All the Job's pods (those being deleted too) and the listing's resourceVersion."""
        listing = self.call(
            f"Pods of job {name}",
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=f"job-name={name}",
        )
        version = str((listing.get("metadata") or {}).get("resourceVersion") or "")
        return list(listing.get("items") or []), version

    def pod(self, name: str) -> tuple[Obj | None, str]:
        """The Job's newest pod that is not being deleted (None when it has none) and the
        listing's resourceVersion. ContainerNotFoundError when the Job does not exist."""
        pods, version = self.job_pods(name)
        pod = pod_state.newest(pod_state.live(pods))
        if pod is None:
            self.read_job(name)  # raises ContainerNotFoundError when the Job is gone
        return pod, version

    def watch(
        self, name: str, done: Callable[[Obj | None], bool], timeout: float | None
    ) -> Obj | None:
        """List the Job's pod, then watch it until ``done(pod)``: that pod, or None after
        ``timeout``. ContainerNotFoundError when the Job is gone."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pod, version = self.pod(name)
        while not done(pod):
            left = _WATCH_SLICE if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return None
            relist = True
            for kind, seen in self.events(name, version, min(left, _WATCH_SLICE)):
                if kind in {"ERROR", "DELETED"}:  # expired, or the pod went: list again
                    break
                version = str((seen.get("metadata") or {}).get("resourceVersion") or version)
                pod = seen
                if done(pod):
                    return pod
            else:
                relist = False
            if relist:
                pod, version = self.pod(name)
        return pod

    def events(self, name: str, version: str, seconds: float) -> Iterator[tuple[str, Obj]]:
        """The events of one watch request on the Job's pods, for at most ``seconds``."""
        params: dict[str, Any] = {
            "label_selector": f"job-name={name}",
            "watch": True,
            "timeout_seconds": max(1, math.ceil(seconds)),
            "_preload_content": False,
            "_request_timeout": (self.timeout, seconds),
        }
        if version:
            params["resource_version"] = version
        with self.translating(f"Watch the pod of job {name}"):
            response = self.core.list_namespaced_pod(self.namespace, **params)
            try:
                for line in lines(response):
                    event = json.loads(line)
                    yield str(event.get("type") or ""), dict(event.get("object") or {})
            finally:
                release(response)

    def log(
        self, pod_name: str, *, follow: bool = False, idle: float = FOLLOW_IDLE, **params: Any
    ) -> Any:
        """The raw log answer of the pod's job container (``params``: ``tail_lines``...).
        Followed, reading has no deadline but ``idle`` (seconds without a byte): the answer
        is as silent as the job."""
        if follow:
            params["follow"] = True
        return self.core.read_namespaced_pod_log(
            pod_name,
            self.namespace,
            container=kubernetes_spec.CONTAINER,
            _preload_content=False,
            _request_timeout=(self.timeout, idle) if follow else self.timeout,
            **params,
        )


def release(response: Any) -> None:
    """Give a streamed answer's connection back to the client's pool, closed first unless
    the answer was read to its end: a connection with part of an answer still on it would
    be taken by the next request, which then fails (``ResponseNotReady('Request-sent')``)."""
    if not response.closed:
        response.close()
    response.release_conn()


def chunks(response: Any) -> Iterator[bytes]:
    """The bytes of a streamed answer as they arrive (``stream()`` would wait for
    ``READ_SIZE`` bytes of a followed log, or its end)."""
    while chunk := response.read1(READ_SIZE):
        yield chunk


def lines(response: Any) -> Iterator[bytes]:
    """The lines of a watch answer as they arrive; a read that times out ends them."""
    pending = b""
    try:
        for chunk in chunks(response):
            parts = (pending + chunk).split(b"\n")
            pending = parts.pop()
            yield from (part for part in parts if part.strip())
    except Exception as err:  # the watch's own deadline: no more events in this slice
        if not _timed_out(err):
            raise
    if pending.strip():
        yield pending


def _timed_out(err: Exception) -> bool:
    return "timed out" in str(err).lower() or "timeout" in type(err).__name__.lower()


def api_message(err: Exception) -> str:
    """The API server's message of an error answer (its Status object), else the reason."""
    body = getattr(err, "body", None)
    try:
        message = json.loads(body or b"{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or getattr(err, "reason", "") or err)
