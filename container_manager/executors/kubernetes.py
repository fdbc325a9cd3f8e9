"""KubernetesExecutor: each job attempt runs once as a ``batch/v1`` Job, in one namespace of
one cluster, over the official ``kubernetes`` client (the optional extra ``kubernetes``,
imported only when a cluster host is used).

A host is a cluster and a namespace, written in its ``connection_string``
(:mod:`~container_manager.executors.kubernetes_host`):
``kubernetes:///path/to/kubeconfig?namespace=NS[&context=NAME]`` or
``kubernetes://in-cluster?namespace=NS``.

The id the rest of the app sees as the "container id" is the **Job's name**, made from the job
id and attempt (:func:`~container_manager.spec.container_name`): a repeated launch gets a 409
and adopts the Job a previous try created. How the spec maps onto the Job, its pod and its
Secrets: :mod:`~.kubernetes_spec`; the Secrets on the cluster: :mod:`~.kubernetes_secrets`;
the client, its errors and the watch: :mod:`~.kubernetes_api`; how a pod's state is read:
:mod:`~.kubernetes_pods`; stopping: :mod:`~.kubernetes_stop`.

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

**Stopping** (timeout, cancel) deletes the pod with the grace period asked for (the worker's
``STOP_GRACE_SECONDS``), its Job told to make no other; the output and the container's
terminated state (exit code 143 or 137) are kept from before the pod goes, for the harvest
(:mod:`~.kubernetes_stop`). A pod that has no node yet is stopped by deleting its Job.

**Output**: Kubernetes keeps one stream per container, stdout and stderr merged; it is read as
stdout (``merges_output``; the attempt's record says so), never split by guessing; a running
job's is followed (``follows_output``: the pod's log with ``follow``).

**Removal**: the app deletes the Job after harvesting (background propagation: its pod and
its Secrets go with it); ``ttlSecondsAfterFinished`` removes one the app never came back for,
on clusters that honour it (1.21+). The reaper lists Jobs, and the attempts' Secrets whose Job
is gone (:meth:`KubernetesExecutor.leftovers`), by the app's labels only.

Every API call has a deadline (the engine timeout); watches end at the caller's.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, ClassVar

from django.utils import timezone

from ..conf import get_settings
from ..exceptions import (
    ContainerManagerError,
    ContainerNotFoundError,
    ExecutorConnectionError,
    ExecutorError,
    ImageAccessDeniedError,
    PermanentLaunchError,
)
from ..spec import EngineHost, image_reference_problem
from . import kubernetes_pods as pod_state
from . import kubernetes_secrets, kubernetes_spec, kubernetes_stop
from .base import (
    LABEL_MANAGED,
    BaseExecutor,
    ContainerState,
    JobSpec,
    Leftover,
    Stream,
    no_usage,
)
from .kubernetes_api import ClusterApi, chunks, release
from .kubernetes_host import (
    ClusterTarget,
    cluster_url,
    context_problem,
    parse_cluster_url,
    sdk,
)
from .kubernetes_logs import untimed
from .kubernetes_pods import Obj
from .kubernetes_stop import Stopped

__all__ = ["ClusterTarget", "KubernetesExecutor", "cluster_url", "parse_cluster_url"]

_REFUSALS_WITH_CREDENTIALS = 2  # pulls refused before a job with a registry credential fails
_STOPPED_KEPT = 256  # stopped pods' states kept for their harvest, at most
#: API deadlines a launch may take between making a Secret and its Job: a Secret without a
#: Job younger than this may be a launch's, not an orphan.
_LAUNCH_CALLS = 4


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
    #: A running job's log is followed (the admin's live view shows it).
    follows_output: ClassVar[bool] = True
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
            if not target.in_cluster and (problem := context_problem(target)):
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
        self.cluster = ClusterApi(
            self.target, self.base_url, self.timeout, int(self.config.get("pool_size", 10))
        )
        self._server_minor: int | None = None
        self._lock = threading.Lock()
        #: The pods stopped, by Job: what the harvest reads once they are gone.
        self._stopped: dict[str, Stopped] = {}
        #: The Jobs being stopped (or stopped): their followed output ends with the kill.
        self._stopping: set[str] = set()

    def _start_limit(self) -> float:
        """How long a launch waits for a pod that waits (unschedulable, a quota, a config
        error): nine tenths of the host's start timeout (else START_TIMEOUT), so that the
        cluster's reason is told before the worker gives the launch up; without either,
        the engine timeout."""
        limit = getattr(self.host, "start_timeout", None) or get_settings().START_TIMEOUT
        return max(1.0, float(limit) * 0.9) if limit else self.timeout

    def close(self) -> None:
        self.cluster.close()

    @property
    def batch(self) -> Any:
        return self.cluster.batch

    @property
    def core(self) -> Any:
        return self.cluster.core

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
            version = self._version()
            self._server_minor = int(re.sub(r"\D", "", str(version.get("minor", "0"))) or 0)
        return self._server_minor >= 21

    def _version(self) -> Obj:
        return self.cluster.call("Cluster version", sdk().client.VersionApi(self.api).get_code)

    @property
    def api(self) -> Any:
        """The client's ApiClient, made on first use."""
        return self.cluster.api

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
            kubernetes_secrets.put(self.cluster, secret)
        manifest = kubernetes_spec.job_manifest(spec, ttl=self._ttl_supported())
        try:
            job = self.cluster.call(
                f"Create job {spec.name} for image {spec.image!r}",
                self.batch.create_namespaced_job,
                self.namespace,
                manifest,
            )
        except ExecutorError as err:
            if err.status_code != 409:
                kubernetes_secrets.delete_of(self.cluster, spec.name)
                if err.status_code == 404:  # the namespace: retrying does not help
                    raise PermanentLaunchError(
                        f"{err} (namespace {self.namespace} of {self.base_url})",
                        status_code=404,
                    ) from err
                raise
            self._own(spec.name, self.cluster.read_job(spec.name), secrets)
            return spec.name  # a previous try created it: adopted
        self._own(spec.name, job, secrets)
        self._await_start(spec)
        return spec.name

    def _own(self, name: str, job: Obj, secrets: list[Obj]) -> None:
        """Make the Job the owner of its Secrets, or remove it (and them) and raise: a Job
        the launch gives up on must not run on unwatched."""
        try:
            kubernetes_secrets.own(self.cluster, job, secrets)
        except ExecutorError:
            with suppress(ContainerManagerError):
                self.cleanup(name)
            raise

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
            if self.cluster.watch(spec.name, decided, self.start_timeout) is not None:
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
        events = self.cluster.call(
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

    # ---- watching and harvesting ---------------------------------------------------------

    def wait(self, container_id: str, timeout: float | None) -> int | None:
        """The container's exit code once the pod ended; None after ``timeout``."""
        if (stopped := self._stopped.get(container_id)) is not None:
            return pod_state.exit_code(stopped.pod)
        pod = self.cluster.watch(container_id, pod_state.pod_ended, timeout)
        if pod is None:
            return None
        return pod_state.exit_code(pod)

    def inspect(self, container_id: str) -> ContainerState:
        stopped = self._stopped.get(container_id)
        pod = stopped.pod if stopped is not None else self.cluster.pod(container_id)[0]
        terminated = pod_state.terminated(pod)
        running = (pod_state.container_status(pod).get("state") or {}).get("running") or {}
        return ContainerState(
            status=stopped.state_word if stopped is not None else pod_state.word(pod),
            exit_code=pod_state.exit_code(pod) if terminated else None,
            oom_killed=terminated.get("reason") == "OOMKilled",
            error=pod_state.pod_error(pod) or str(pod_state.waiting(pod).get("message") or ""),
            started_at=pod_state.parse_time(
                terminated.get("startedAt") or running.get("startedAt")
            ),
            finished_at=pod_state.parse_time(terminated.get("finishedAt")),
        )

    def _pod_name(self, container_id: str) -> str | None:
        pod, _ = self.cluster.pod(container_id)
        return None if pod is None else str(pod["metadata"]["name"])

    def iter_output(self, container_id: str, stream: Stream) -> Iterator[bytes]:
        """The merged output as ``stdout``; ``stderr`` is empty (Kubernetes keeps one stream).
        A stopped pod's is what was read before it went."""
        if (stopped := self._stopped.get(container_id)) is not None:
            if stream == "stdout" and stopped.output:
                yield stopped.output
            return
        with self.cluster.translating(f"Read the output of job {container_id}"):
            if stream == "stderr":
                self.cluster.read_job(container_id)  # ContainerNotFoundError as for stdout
                return
            if (pod_name := self._pod_name(container_id)) is None:
                return
            response = self.cluster.log(pod_name)
            try:
                yield from chunks(response)
            finally:
                release(response)

    def iter_outputs(self, container_id: str) -> Iterator[tuple[Stream, bytes]]:
        for chunk in self.iter_output(container_id, "stdout"):
            yield "stdout", chunk

    def follow_outputs(self, container_id: str) -> Iterator[tuple[Stream, bytes]]:
        """The merged output as the container writes it (the pod's log, followed), until it
        exited; ExecutorError when the log ended while the container still ran (the
        harvest then reads it again)."""
        with self.cluster.translating(f"Follow the output of job {container_id}"):
            if (pod_name := self._pod_name(container_id)) is None:
                raise ExecutorError(f"Job {container_id} has no pod to follow")
            response = self.cluster.log(pod_name, follow=True, timestamps=True)
            try:
                for text in untimed(chunks(response)):
                    yield "stdout", text
            finally:
                release(response)
        if container_id in self._stopping:
            return  # the stop ended it: the log ends with the container
        ended = self.cluster.watch(
            container_id, pod_state.pod_ended, kubernetes_stop.SETTLE_SECONDS
        )
        if ended is None:
            raise ExecutorError(f"The log of job {container_id} ended while its container ran")

    def tail_output(self, container_id: str, stream: Stream, lines: int) -> bytes:
        if stream == "stderr":
            return b""
        if (stopped := self._stopped.get(container_id)) is not None:
            return b"".join(stopped.output.splitlines(keepends=True)[-lines:])
        with self.cluster.translating(f"Tail the output of job {container_id}"):
            if (pod_name := self._pod_name(container_id)) is None:
                return b""
            response = self.cluster.log(pod_name, tail_lines=lines)
            try:
                return bytes(response.data)
            finally:
                release(response)

    def find_container(self, name: str) -> str | None:
        try:
            return str(self.cluster.read_job(name)["metadata"]["name"])
        except ContainerNotFoundError:
            return None

    def stop_container(self, container_id: str, grace: int | None = None) -> bool:
        """Delete the pod with ``grace`` seconds (default ``STOP_GRACE_SECONDS``): SIGTERM,
        then SIGKILL; its output and its container's end, when the kubelet reports it, are
        kept for the harvest (:mod:`~.kubernetes_stop`). A pod with no node yet (or a Job
        without a pod) is removed with its Job. A stop tried again resumes on the pod being
        deleted. A grace of 0 is sent as 1: the API removes a pod deleted with 0 at once,
        before the kubelet killed its container and could report it."""
        grace = max(1, get_settings().STOP_GRACE_SECONDS if grace is None else grace)
        try:
            pods, version = self.cluster.job_pods(container_id)
            pod = pod_state.newest(pods)
            if pod is None:
                self.cluster.read_job(container_id)  # ContainerNotFoundError: gone already
        except ContainerNotFoundError:
            return True
        if pod is not None and pod_state.pod_ended(pod) and not _deleting(pod):
            return True
        if pod is None or not (pod.get("spec") or {}).get("nodeName"):
            return self.cleanup(container_id)
        self._stopping.add(container_id)
        try:
            stopped = kubernetes_stop.stop(self.cluster, container_id, pod, version, grace)
        except ContainerNotFoundError:
            return True  # the Job went meanwhile
        with self._lock:
            while len(self._stopped) >= _STOPPED_KEPT:
                self._forget(next(iter(self._stopped)))
            self._stopped[container_id] = stopped
        return True

    def _forget(self, container_id: str) -> None:
        self._stopped.pop(container_id, None)
        self._stopping.discard(container_id)

    def cleanup(self, container_id: str) -> bool:
        """Delete the Job, its pods at once (SIGKILL, as a forced removal of a container:
        the garbage collector would take a moment) and the attempt's Secrets; True also when
        they are gone."""
        self.discard(container_id)
        self.cluster.call(
            f"Delete the pods of job {container_id}",
            self.core.delete_collection_namespaced_pod,
            self.namespace,
            label_selector=f"job-name={container_id}",
            grace_period_seconds=0,
        )
        kubernetes_secrets.delete_of(self.cluster, container_id)
        return True

    def discard(self, container_id: str) -> None:
        """After harvesting (the worker's hot path): one request, the Job's; its pod and the
        Secrets it owns go with it."""
        with suppress(ContainerNotFoundError):
            self.cluster.call(
                f"Delete job {container_id}",
                self.batch.delete_namespaced_job,
                container_id,
                self.namespace,
                body={"propagationPolicy": "Background"},
            )
        with self._lock:
            self._forget(container_id)

    # ---- inspection and maintenance ------------------------------------------------------

    def check_status(self, container_id: str) -> str:
        if (stopped := self._stopped.get(container_id)) is not None:
            return stopped.state_word
        try:
            pod, _ = self.cluster.pod(container_id)
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
        self.cluster.read_job(container_id)
        return no_usage()

    def list_containers(self) -> list[dict[str, Any]]:
        """This app's Jobs in the namespace: labelled managed, and with every
        ``CONTAINER_LABELS`` label; status and end from each one's pod (the Job's own status
        follows the pod's a moment later)."""
        selector = _scope()
        jobs = self.cluster.call(
            "List jobs", self.batch.list_namespaced_job, self.namespace, label_selector=selector
        )
        pods = self.cluster.call(
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

    def leftovers(self, made_before: datetime) -> list[Leftover]:
        """The attempts' Secrets (the app's labels) whose Job does not exist, made before
        ``made_before`` and before a launch's last few API deadlines (a launch makes its
        Secrets, then its Job)."""
        launching = timezone.now() - timedelta(seconds=_LAUNCH_CALLS * self.timeout)
        return kubernetes_secrets.orphans(self.cluster, _scope(), min(made_before, launching))

    def remove_leftover(self, leftover_id: str) -> bool:
        kubernetes_secrets.delete(self.cluster, leftover_id)
        return True

    def health_check(self) -> bool:
        """Whether the API server answers /readyz with ok."""
        try:
            with self.cluster.translating("Ask /readyz"):
                request = self.api.param_serialize("GET", "/readyz", auth_settings=["BearerToken"])
                response = self.api.call_api(*request, _request_timeout=self.timeout)
                response.read()
                return int(response.status) == 200 and bytes(response.data).strip() == b"ok"
        except ContainerManagerError:
            return False

    def get_version(self) -> str:
        """The cluster's version (``/version``'s gitVersion)."""
        return str(self._version().get("gitVersion") or "unknown")

    def capacity(self) -> tuple[float, int] | None:
        """The nodes' allocatable CPUs and memory (MB), when this account may list nodes."""
        try:
            nodes = self.cluster.call("List nodes", self.core.list_node)
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
        if not self.target.in_cluster and (problem := context_problem(self.target)):
            problems.append(problem)
        return problems


def _scope() -> str:
    """The label selector of what this app made: managed, and every ``CONTAINER_LABELS``."""
    scope = {**get_settings().CONTAINER_LABELS, LABEL_MANAGED: "true"}
    return ",".join(f"{key}={value}" for key, value in scope.items())


def _deleting(pod: Obj) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))
