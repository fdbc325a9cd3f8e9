"""KubernetesExecutor: each job attempt runs once as a ``batch/v1`` Job, in one namespace of
one cluster, over the official ``kubernetes`` client (the optional extra ``kubernetes``,
imported only when a cluster host is used).

A host is a cluster and a namespace, written in its ``connection_string``:

- ``kubernetes:///path/to/kubeconfig?namespace=NS[&context=NAME]``: a kubeconfig file (on the
  worker's machine) and one of its contexts (default: its current context);
- ``kubernetes://in-cluster?namespace=NS``: the service account of the pod the worker runs in.

The id the rest of the app sees as the "container id" is the **Job's name**, made from the job
id and attempt (:func:`~container_manager.spec.container_name`): a repeated launch gets a 409
and adopts the Job a previous try created. How the spec maps onto the Job, its pod and its
Secrets: :mod:`container_manager.executors.kubernetes_spec`; how a pod's state is read:
:mod:`container_manager.executors.kubernetes_pods`.

Status comes from the API: the Job's pod is listed, then watched (no polling sleeps). The exit
code and ``OOMKilled`` are the container's terminated state. Launch failures are the pod's:
``InvalidImageName`` fails at once (:class:`PermanentLaunchError`), a pull the registry refuses
too (:class:`ImageAccessDeniedError`); an image that cannot be pulled (``ErrImagePull``,
``ImagePullBackOff``, ``ErrImageNeverPull``) raises :class:`ImageUnavailableError` at the first
failed pull; ``CreateContainerConfigError``, ``Unschedulable`` and a Job whose pod cannot be
created (``FailedCreate``: a quota) are given until ``start_timeout`` (nine tenths of
the host's start timeout or ``START_TIMEOUT``), then fail with the cluster's reason. A
container the runtime could not start (``ContainerCannotRun``) fails the launch with the
runtime's words.

**Stopping** (timeout, cancel) sets the pod's ``activeDeadlineSeconds``: the kubelet sends
SIGTERM and, after the pod's ``terminationGracePeriodSeconds`` (``STOP_GRACE_SECONDS``, fixed
when the Job is created: a pod's grace cannot be changed later), SIGKILL; the pod ends
``Failed`` keeping its output (the kubelet of 1.20 does not report the killed container's
exit code), and the Job fails (``backoffLimit: 0``). Deleting
the pod instead would lose both, and the Job controller of 1.20 would make a new pod in its
place. A pod that has no node yet is stopped by deleting its Job.

**Output**: Kubernetes keeps one stream per container, stdout and stderr merged; it is read as
stdout (``merges_output``; the attempt's record says so), never split by guessing.

**Removal**: the app deletes the Job after harvesting (background propagation: its pod and
its Secrets go with it); ``ttlSecondsAfterFinished`` removes one the app never came back for,
on clusters that honour it (1.21+). The reaper lists Jobs by the app's labels only.

Every API call has a deadline (``_request_timeout``: the engine timeout); watches end at the
caller's.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from ..conf import get_settings
from ..exceptions import (
    ContainerManagerError,
    ContainerNotFoundError,
    ExecutorConnectionError,
    ExecutorError,
    ImageAccessDeniedError,
    PermanentLaunchError,
    SpecRefusedError,
)
from ..spec import EngineHost, image_reference_problem
from . import kubernetes_pods as pod_state
from . import kubernetes_spec
from .base import LABEL_MANAGED, BaseExecutor, ContainerState, JobSpec, Stream, no_usage
from .kubernetes_pods import Obj

__all__ = ["ClusterTarget", "KubernetesExecutor", "cluster_url", "parse_cluster_url"]

SCHEME = "kubernetes"
IN_CLUSTER = "in-cluster"
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_READ_SIZE = 64 * 1024
_SETTLE_SECONDS = 15.0  # how long a stopped pod may take to report its end, beyond the grace
_WATCH_SLICE = 30.0  # seconds per watch request at most
_REFUSALS_WITH_CREDENTIALS = 2  # pulls refused before a job with a registry credential fails
# ---- the host: a cluster and a namespace ----------------------------------------------------


@dataclass(frozen=True)
class ClusterTarget:
    """Where a cluster host's jobs run. ``kubeconfig`` is empty for in-cluster configuration."""

    kubeconfig: str
    context: str
    namespace: str

    @property
    def in_cluster(self) -> bool:
        return not self.kubeconfig


def cluster_url(kubeconfig: str, namespace: str, context: str = "") -> str:
    """The ``connection_string`` of a cluster host (``kubeconfig`` empty: in-cluster)."""
    query = {"namespace": namespace, **({"context": context} if context else {})}
    where = f"/{quote(kubeconfig.lstrip('/'))}" if kubeconfig else IN_CLUSTER
    return f"{SCHEME}://{where}?{urlencode(query)}"


def parse_cluster_url(url: str) -> ClusterTarget:
    """The target of a cluster host's URL; ConfigurationError-free: ValueError names what
    is wrong (the executor's ``validate_host`` turns it into a field error)."""
    parts = urlsplit(url or "")
    if parts.scheme != SCHEME:
        raise ValueError(
            "Not a cluster URL: use kubernetes:///path/to/kubeconfig?namespace=NS[&context=NAME]"
            " or kubernetes://in-cluster?namespace=NS."
        )
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"namespace", "context"}
    if unknown:
        raise ValueError(f"Unknown cluster URL options: {', '.join(sorted(unknown))}.")
    if any(len(values) > 1 for values in query.values()):
        raise ValueError("Give each cluster URL option once.")
    namespace = query.get("namespace", [""])[0]
    context = query.get("context", [""])[0]
    if not namespace:
        raise ValueError("Name the namespace the jobs run in: ?namespace=NS.")
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(f"{namespace!r} is not a namespace name (lower-case DNS label).")
    if parts.netloc == IN_CLUSTER:
        if parts.path or context:
            raise ValueError("kubernetes://in-cluster takes no path and no context.")
        return ClusterTarget("", "", namespace)
    if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
        raise ValueError(
            "The kubeconfig is an absolute path: kubernetes:///path/to/kubeconfig?namespace=NS."
        )
    return ClusterTarget(unquote(parts.path), context, namespace)


def _sdk() -> Any:
    """The ``kubernetes`` package, imported on first use."""
    try:
        import kubernetes
    except ImportError as err:
        raise ExecutorConnectionError(
            "The kubernetes executor needs the official client: "
            "pip install 'django-container-jobs[kubernetes]'"
        ) from err
    return kubernetes


def _context_problem(target: ClusterTarget) -> str:
    """What is wrong with the kubeconfig file and context, read here ('' when nothing is, or
    when the file is not on this machine: it may be on the worker's)."""
    path = Path(target.kubeconfig)
    if not path.exists():
        return ""
    if not path.is_file():
        return f"{target.kubeconfig} is not a file."
    try:
        kubernetes = _sdk()
        contexts, _ = kubernetes.config.list_kube_config_contexts(config_file=str(path))
    except ExecutorConnectionError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - the client's loader raises many kinds
        return f"{target.kubeconfig} is not a readable kubeconfig: {err}"
    names = sorted(str(c.get("name")) for c in contexts or [])
    if target.context and target.context not in names:
        return (
            f"The kubeconfig {target.kubeconfig} has no context {target.context!r};"
            f" it has: {', '.join(names) or 'none'}."
        )
    return ""


# ---- the executor --------------------------------------------------------------------------


class KubernetesExecutor(BaseExecutor):
    """Runs jobs as run-once Kubernetes Jobs in one namespace of one cluster.

    ``config["docker_host"]`` is an ExecutorHost (or its URL); optional ``timeout`` (seconds
    per API call), ``pool_size`` (connections) and ``start_timeout`` (seconds a launch waits
    for the pod to start or fail; default nine tenths of the host's start timeout or
    START_TIMEOUT).
    """

    supports_resource_limits: ClassVar[bool] = True
    #: The cluster's metrics API is an add-on: no figures are read.
    supports_stats: ClassVar[bool] = False
    #: stdout and stderr arrive as one stream, recorded as stdout.
    merges_output: ClassVar[bool] = True
    runs_as: ClassVar[str] = "job"
    supported_fields: ClassVar[frozenset[str]] = kubernetes_spec.SUPPORTED_FIELDS

    @classmethod
    def validate_host(cls, host: EngineHost) -> dict[str, str]:
        """The cluster URL (a kubeconfig path and context, or in-cluster, and a namespace);
        the Docker-only options must be off."""
        errors: dict[str, str] = {}
        try:
            target = parse_cluster_url(host.connection_string)
        except ValueError as err:
            errors["connection_string"] = str(err)
        else:
            if not target.in_cluster and (problem := _context_problem(target)):
                errors["connection_string"] = problem
        if host.tls_enabled or host.tls_client_cert or host.tls_client_key or host.tls_ca_cert:
            errors["tls_enabled"] = (
                "A cluster host takes its TLS settings from the kubeconfig (or the pod's"
                " service account): leave the host's TLS options empty."
            )
        return errors

    @classmethod
    def spec_refusals(cls, spec: JobSpec) -> dict[str, str]:
        return kubernetes_spec.spec_refusals(spec)

    def effective(self, spec: JobSpec) -> JobSpec:
        """No init process (Kubernetes has no such field), and the output is merged."""
        return replace(spec, init=False, merged_output=True)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        try:
            self.target = parse_cluster_url(self.base_url)
        except ValueError as err:
            raise ExecutorConnectionError(f"Cluster host {self.base_url!r}: {err}") from err
        self.namespace = self.target.namespace
        self.timeout = float(self.config.get("timeout", get_settings().ENGINE_TIMEOUT))
        self.start_timeout = float(self.config.get("start_timeout") or self._start_limit())
        self.pool_size = int(self.config.get("pool_size", 10))
        self._api: Any = None
        self._lock = threading.Lock()
        self._server_minor: int | None = None

    def _start_limit(self) -> float:
        """How long a launch waits for a pod that waits (unschedulable, a quota, a config
        error): nine tenths of the host's start timeout (else START_TIMEOUT), so that the
        cluster's reason is told before the worker gives the launch up; without either,
        the engine timeout."""
        limit = getattr(self.host, "start_timeout", None) or get_settings().START_TIMEOUT
        return max(1.0, float(limit) * 0.9) if limit else self.timeout

    # ---- the client and the one translation point ---------------------------------------

    @property
    def api(self) -> Any:
        """The client's ApiClient for this cluster, made on first use."""
        if self._api is None:
            with self._lock:
                if self._api is None:
                    self._api = self._connect()
        return self._api

    def _connect(self) -> Any:
        kubernetes = _sdk()
        configuration = kubernetes.client.Configuration()
        try:
            if self.target.in_cluster:
                kubernetes.config.load_incluster_config(client_configuration=configuration)
            else:
                kubernetes.config.load_kube_config(
                    config_file=self.target.kubeconfig,
                    context=self.target.context or None,
                    client_configuration=configuration,
                    persist_config=False,
                )
        except Exception as err:
            where = "in-cluster configuration" if self.target.in_cluster else self.target.kubeconfig
            context = f", context {self.target.context!r}" if self.target.context else ""
            raise ExecutorConnectionError(
                f"Cannot load the cluster configuration ({where}{context}): {err}"
            ) from err
        configuration.connection_pool_maxsize = self.pool_size
        configuration.retries = False
        return kubernetes.client.ApiClient(configuration)

    def close(self) -> None:
        if self._api is not None:
            with suppress(Exception):
                self._api.close()
            self._api = None

    @property
    def batch(self) -> Any:
        return _sdk().client.BatchV1Api(self.api)

    @property
    def core(self) -> Any:
        return _sdk().client.CoreV1Api(self.api)

    @contextmanager
    def _cluster(self, action: str) -> Iterator[None]:
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
            message = f"{action}: {_api_message(err)}"
            kind: type[ExecutorError] = ExecutorError
            if status == 404:
                kind = ContainerNotFoundError
            elif status in (400, 422):
                kind = SpecRefusedError
            elif status == 403:
                kind = PermanentLaunchError
            return kind(message, status_code=status)
        return ExecutorConnectionError(
            f"{action}: cannot reach the cluster ({self.base_url}): {err or type(err).__name__}"
        )

    def _call(self, action: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
        """``method(*args, **kwargs)`` with the deadline, its JSON answer as a dict."""
        with self._cluster(action):
            response = method(
                *args, _preload_content=False, _request_timeout=self.timeout, **kwargs
            )
            try:
                data = response.data
            finally:
                response.release_conn()
            return dict(json.loads(data)) if data else {}

    # ---- launching ------------------------------------------------------------------------

    def refusals(self, spec: JobSpec) -> dict[str, str]:
        """What this executor refuses of ``spec`` as it is launched: the fields it does not
        support, and :meth:`spec_refusals`."""
        errors = {
            name: f"The kubernetes executor cannot honour {name}."
            for name in sorted(spec.requested() - self.supported_fields)
        }
        return {**errors, **self.spec_refusals(spec)}

    def _ttl_supported(self) -> bool:
        """Whether the cluster honours ttlSecondsAfterFinished (1.21+; 1.20 drops it)."""
        if self._server_minor is None:
            version = self._call("Cluster version", _sdk().client.VersionApi(self.api).get_code)
            self._server_minor = int(re.sub(r"\D", "", str(version.get("minor", "0"))) or 0)
        return self._server_minor >= 21

    def run(self, spec: JobSpec) -> str:
        """Create the attempt's Secrets and Job (or adopt the Job a previous try created),
        and wait until its pod runs or ends; a pod that cannot start raises, and its Job is
        deleted."""
        if errors := self.refusals(spec):
            raise PermanentLaunchError("; ".join(errors[name] for name in sorted(errors)))
        if problem := image_reference_problem(spec.image):
            raise PermanentLaunchError(f"Invalid job: {problem}")
        secrets = kubernetes_spec.secret_manifests(spec)
        for secret in secrets:
            self._put_secret(secret)
        manifest = kubernetes_spec.job_manifest(spec, ttl=self._ttl_supported())
        try:
            job = self._call(
                f"Create job {spec.name} for image {spec.image!r}",
                self.batch.create_namespaced_job,
                self.namespace,
                manifest,
            )
        except ExecutorError as err:
            if err.status_code != 409:
                self._delete_secrets(spec.name)
                if err.status_code == 404:  # the namespace: retrying does not help
                    raise PermanentLaunchError(
                        f"{err} (namespace {self.namespace} of {self.base_url})",
                        status_code=404,
                    ) from err
                raise
            self._own_secrets(self._read_job(spec.name), secrets)
            return spec.name  # a previous try created it: adopted
        self._own_secrets(job, secrets)
        self._await_start(spec)
        return spec.name

    def _put_secret(self, secret: Obj) -> None:
        name = secret["metadata"]["name"]
        try:
            self._call(
                f"Create secret {name}", self.core.create_namespaced_secret, self.namespace, secret
            )
        except ExecutorError as err:
            if err.status_code != 409:
                raise
            self._call(
                f"Replace secret {name}",
                self.core.replace_namespaced_secret,
                name,
                self.namespace,
                secret,
            )

    def _own_secrets(self, job: Obj, secrets: list[Obj]) -> None:
        """Make the Job the owner of the attempt's Secrets: deleting it deletes them."""
        meta = job.get("metadata") or {}
        owner = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": meta.get("name"),
            "uid": meta.get("uid"),
        }
        for secret in secrets:
            name = secret["metadata"]["name"]
            self._call(
                f"Own secret {name}",
                self.core.patch_namespaced_secret,
                name,
                self.namespace,
                {"metadata": {"ownerReferences": [owner]}},
            )

    def _await_start(self, spec: JobSpec) -> None:
        """Wait (up to ``start_timeout``) until the pod runs or ends; raise (and delete the
        Job) when it cannot start."""
        waited_for, refusals, last_reason = "", 0, ""

        def decided(pod: Obj | None) -> bool:
            nonlocal waited_for, refusals, last_reason
            state = pod_state.start_state(pod, spec.image)
            reason = str(pod_state.waiting(pod).get("reason") or "")
            # The kubelet's first pull can miss the pod's pull secret (1.20's node authorizer
            # links the pod to it a moment later: "no relationship found"), and it pulls
            # again after a back-off: with a credential, a refusal counts from the second.
            if isinstance(state.error, ImageAccessDeniedError) and spec.registry_auth:
                refusals += reason != last_reason
                if refusals < _REFUSALS_WITH_CREDENTIALS:
                    state = pod_state.Start(waiting=str(state.error))
            elif refusals and reason == "ImagePullBackOff":
                state = pod_state.Start(waiting=waited_for)
            last_reason = reason
            if state.error is not None:
                raise state.error
            waited_for = state.waiting or waited_for
            return state.started

        try:
            if self._watch(spec.name, decided, self.start_timeout) is not None:
                return
            reason = waited_for or self._failed_create(spec.name) or "no reason given"
            raise ExecutorError(
                f"Job {spec.name} did not start within {self.start_timeout:g}s: {reason}"
            )
        except ExecutorError as err:
            if not isinstance(err, ExecutorConnectionError):
                with suppress(ContainerManagerError):
                    self.cleanup(spec.name)
            raise

    def _failed_create(self, name: str) -> str:
        """The Job controller's last FailedCreate words for the Job (a quota), or ''."""
        events = self._call(
            f"Events of job {name}",
            self.core.list_namespaced_event,
            self.namespace,
            field_selector=f"involvedObject.kind=Job,involvedObject.name={name}",
        )
        failed = [e for e in events.get("items") or [] if e.get("reason") == "FailedCreate"]
        if not failed:
            return ""
        last = max(failed, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        return f"FailedCreate: {last.get('message') or ''}".rstrip(": ")

    def create(self, spec: JobSpec) -> str:
        """A Job is scheduled as soon as it exists: this is :meth:`run`."""
        return self.run(spec)

    # ---- the Job and its pod --------------------------------------------------------------

    def _read_job(self, name: str) -> Obj:
        return self._call(f"Read job {name}", self.batch.read_namespaced_job, name, self.namespace)

    def _pods(self, name: str) -> tuple[Obj | None, str]:
        """The Job's newest pod that is not being deleted (None when it has none) and the
        listing's resourceVersion. ContainerNotFoundError when the Job does not exist."""
        listing = self._call(
            f"Pods of job {name}",
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=f"job-name={name}",
        )
        pod = pod_state.newest(pod_state.live(list(listing.get("items") or [])))
        if pod is None:
            self._read_job(name)  # raises ContainerNotFoundError when the Job is gone
        return pod, str((listing.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(
        self, name: str, done: Callable[[Obj | None], bool], timeout: float | None
    ) -> Obj | None:
        """List the Job's pod, then watch it until ``done(pod)``: that pod, or None after
        ``timeout``. ContainerNotFoundError when the Job is gone."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pod, version = self._pods(name)
        while not done(pod):
            left = _WATCH_SLICE if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return None
            relist = True
            for kind, seen in self._events(name, version, min(left, _WATCH_SLICE)):
                if kind in {"ERROR", "DELETED"}:  # expired, or the pod went: list again
                    break
                version = str((seen.get("metadata") or {}).get("resourceVersion") or version)
                pod = seen
                if done(pod):
                    return pod
            else:
                relist = False
            if relist:
                pod, version = self._pods(name)
        return pod

    def _events(self, name: str, version: str, seconds: float) -> Iterator[tuple[str, Obj]]:
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
        with self._cluster(f"Watch the pod of job {name}"):
            response = self.core.list_namespaced_pod(self.namespace, **params)
            try:
                for line in _lines(response):
                    event = json.loads(line)
                    yield str(event.get("type") or ""), dict(event.get("object") or {})
            finally:
                response.close()
                response.release_conn()

    # ---- watching and harvesting ---------------------------------------------------------

    def wait(self, container_id: str, timeout: float | None) -> int | None:
        """The container's exit code once the pod ended; None after ``timeout``."""
        pod = self._watch(container_id, pod_state.pod_ended, timeout)
        if pod is None:
            return None
        return pod_state.exit_code(pod)

    def inspect(self, container_id: str) -> ContainerState:
        pod, _ = self._pods(container_id)
        terminated = pod_state.terminated(pod)
        running = (pod_state.container_status(pod).get("state") or {}).get("running") or {}
        word = pod_state.word(pod)
        return ContainerState(
            status=word,
            exit_code=pod_state.exit_code(pod) if terminated else None,
            oom_killed=terminated.get("reason") == "OOMKilled",
            error=pod_state.pod_error(pod) or str(pod_state.waiting(pod).get("message") or ""),
            started_at=pod_state.parse_time(
                terminated.get("startedAt") or running.get("startedAt")
            ),
            finished_at=pod_state.parse_time(terminated.get("finishedAt")),
        )

    def _log_response(self, container_id: str, **params: Any) -> Any:
        """The raw log answer of the Job's pod, or None when it has no pod."""
        pod, _ = self._pods(container_id)
        if pod is None:
            return None
        return self.core.read_namespaced_pod_log(
            pod["metadata"]["name"],
            self.namespace,
            container=kubernetes_spec.CONTAINER,
            _preload_content=False,
            _request_timeout=self.timeout,
            **params,
        )

    def iter_output(self, container_id: str, stream: Stream) -> Iterator[bytes]:
        """The merged output as ``stdout``; ``stderr`` is empty (Kubernetes keeps one stream)."""
        with self._cluster(f"Read the output of job {container_id}"):
            if stream == "stderr":
                self._read_job(container_id)  # ContainerNotFoundError as for stdout
                return
            response = self._log_response(container_id)
            if response is None:
                return
            try:
                yield from response.stream(_READ_SIZE, decode_content=True)
            finally:
                response.release_conn()

    def iter_outputs(self, container_id: str) -> Iterator[tuple[Stream, bytes]]:
        for chunk in self.iter_output(container_id, "stdout"):
            yield "stdout", chunk

    def tail_output(self, container_id: str, stream: Stream, lines: int) -> bytes:
        if stream == "stderr":
            return b""
        with self._cluster(f"Tail the output of job {container_id}"):
            response = self._log_response(container_id, tail_lines=lines)
            if response is None:
                return b""
            try:
                return bytes(response.data)
            finally:
                response.release_conn()

    def find_container(self, name: str) -> str | None:
        try:
            return str(self._read_job(name)["metadata"]["name"])
        except ContainerNotFoundError:
            return None

    def stop_container(self, container_id: str, grace: int | None = None) -> bool:
        """End the pod through its active deadline (SIGTERM, SIGKILL after the pod's grace
        period, which ``grace`` cannot change) and wait until the kubelet ended it and the
        grace period is over; its output stays. The kubelet of 1.20 does not report the
        killed container's exit code (:func:`~.kubernetes_pods.stopped`). A pod with no
        node yet (or a Job without a pod) is removed with its Job."""
        try:
            pod, _ = self._pods(container_id)
        except ContainerNotFoundError:
            return True
        if pod is not None and pod_state.pod_ended(pod):
            return True
        if pod is None or not (pod.get("spec") or {}).get("nodeName"):
            return self.cleanup(container_id)
        name = pod["metadata"]["name"]
        try:
            self._call(
                f"Stop pod {name} of job {container_id}",
                self.core.patch_namespaced_pod,
                name,
                self.namespace,
                {"spec": {"activeDeadlineSeconds": 1}},
            )
        except ContainerNotFoundError:
            return True
        pod_grace = int((pod.get("spec") or {}).get("terminationGracePeriodSeconds") or 0)
        with suppress(ContainerNotFoundError):
            ended = self._watch(container_id, pod_state.pod_ended, pod_grace + _SETTLE_SECONDS)
            if ended is not None and not pod_state.terminated(ended):
                # The kill's end is not reported: give it its grace period, or until a
                # kubelet that reports it does.
                self._watch(container_id, lambda p: bool(pod_state.terminated(p)), pod_grace + 1)
        return True

    def cleanup(self, container_id: str) -> bool:
        """Delete the Job, its pods at once (SIGKILL, as a forced removal of a container:
        the garbage collector would take a moment) and the attempt's Secrets; True also when
        they are gone."""
        self.discard(container_id)
        self._call(
            f"Delete the pods of job {container_id}",
            self.core.delete_collection_namespaced_pod,
            self.namespace,
            label_selector=f"job-name={container_id}",
            grace_period_seconds=0,
        )
        self._delete_secrets(container_id)
        return True

    def discard(self, container_id: str) -> None:
        """After harvesting (the worker's hot path): one request, the Job's; its pod and the
        Secrets it owns go with it."""
        with suppress(ContainerNotFoundError):
            self._call(
                f"Delete job {container_id}",
                self.batch.delete_namespaced_job,
                container_id,
                self.namespace,
                body={"propagationPolicy": "Background"},
            )

    def _delete_secrets(self, name: str) -> None:
        """The attempt's Secrets, should the Job never have owned them (a crash between)."""
        for secret in (
            kubernetes_spec.env_secret_name(name),
            kubernetes_spec.pull_secret_name(name),
        ):
            with suppress(ContainerNotFoundError):
                self._call(
                    f"Delete secret {secret}",
                    self.core.delete_namespaced_secret,
                    secret,
                    self.namespace,
                )

    # ---- inspection and maintenance ------------------------------------------------------

    def check_status(self, container_id: str) -> str:
        try:
            pod, _ = self._pods(container_id)
        except ContainerNotFoundError:
            return "not-found"
        return pod_state.word(pod)

    def get_logs(self, container_id: str, tail: int | None = None) -> str:
        try:
            if tail is not None:
                raw = self.tail_output(container_id, "stdout", tail)
            else:
                raw = b"".join(self.iter_output(container_id, "stdout"))
        except ContainerNotFoundError:
            return f"Job not found: {container_id} (it was removed or never existed)"
        return raw.decode("utf-8", errors="replace")

    def get_resource_usage(self, container_id: str) -> dict[str, Any]:
        """Zeros (no metrics API is assumed); ContainerNotFoundError when the Job is gone."""
        self._read_job(container_id)
        return no_usage()

    def list_containers(self) -> list[dict[str, Any]]:
        """This app's Jobs in the namespace: labelled managed, and with every
        ``CONTAINER_LABELS`` label; status and end from each one's pod (the Job's own status
        follows the pod's a moment later)."""
        scope = {**get_settings().CONTAINER_LABELS, LABEL_MANAGED: "true"}
        selector = ",".join(f"{key}={value}" for key, value in scope.items())
        jobs = self._call(
            "List jobs", self.batch.list_namespaced_job, self.namespace, label_selector=selector
        )
        pods = self._call(
            "List pods", self.core.list_namespaced_pod, self.namespace, label_selector=selector
        )
        by_job: dict[str, list[Obj]] = {}
        for pod in pods.get("items") or []:
            owner = ((pod.get("metadata") or {}).get("labels") or {}).get("job-name", "")
            by_job.setdefault(owner, []).append(pod)
        return [
            pod_state.entry(
                job, pod_state.newest(by_job.get((job.get("metadata") or {}).get("name", ""), []))
            )
            for job in jobs.get("items") or []
        ]

    def health_check(self) -> bool:
        """Whether the API server answers /readyz with ok."""
        try:
            with self._cluster("Ask /readyz"):
                request = self.api.param_serialize("GET", "/readyz", auth_settings=["BearerToken"])
                response = self.api.call_api(*request, _request_timeout=self.timeout)
                response.read()
                return int(response.status) == 200 and bytes(response.data).strip() == b"ok"
        except ContainerManagerError:
            return False

    def get_version(self) -> str:
        """The cluster's version (``/version``'s gitVersion)."""
        version = self._call("Cluster version", _sdk().client.VersionApi(self.api).get_code)
        return str(version.get("gitVersion") or "unknown")

    def capacity(self) -> tuple[float, int] | None:
        """The nodes' allocatable CPUs and memory (MB), when this account may list nodes."""
        try:
            nodes = self._call("List nodes", self.core.list_node)
        except ExecutorError as err:
            if err.status_code == 403:  # a namespaced account: the cluster's own business
                return None
            raise
        cpus, memory = 0.0, 0
        for node in nodes.get("items") or []:
            allocatable = (node.get("status") or {}).get("allocatable") or {}
            cpus += pod_state.cpu(str(allocatable.get("cpu") or "0"))
            memory += pod_state.memory_mb(str(allocatable.get("memory") or "0"))
        return (cpus, memory) if cpus and memory else None

    def check(self) -> list[str]:
        problems = []
        if not self.target.in_cluster and (problem := _context_problem(self.target)):
            problems.append(problem)
        return problems


def _lines(response: Any) -> Iterator[bytes]:
    """The lines of a watch answer as they arrive; a read that times out ends them."""
    pending = b""
    try:
        for chunk in response.stream(_READ_SIZE, decode_content=True):
            parts = (pending + chunk).split(b"\n")
            pending = parts.pop()
            yield from (part for part in parts if part.strip())
    except Exception as err:  # the watch's own deadline: no more events in this slice
        if "timed out" not in str(err).lower() and "timeout" not in type(err).__name__.lower():
            raise
    if pending.strip():
        yield pending


def _api_message(err: Exception) -> str:
    """The API server's message of an error answer (its Status object), else the reason."""
    body = getattr(err, "body", None)
    try:
        message = json.loads(body or b"{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or getattr(err, "reason", "") or err)
