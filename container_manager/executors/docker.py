"""DockerExecutor: jobs as containers on a Docker engine, over the Docker SDK.

Docker SDK errors are translated into the app's error tree in exactly one place,
:meth:`DockerExecutor._engine`. The SDK client is created lazily, at the first call that
needs it, and is kept for the life of the executor (one pooled client per host per process).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import docker
import requests
from docker.utils import parse_repository_tag
from docker.utils.utils import parse_host

from ..conf import get_settings
from ..exceptions import (
    ConfigurationError,
    ContainerManagerError,
    ContainerNotFoundError,
    ExecutorConnectionError,
    ExecutorError,
    ImageAccessDeniedError,
    ImageUnavailableError,
)
from ..spec import (
    SPEC_FIELDS,
    JobSource,
    RegistryAuth,
    image_reference_problem,
)
from .base import LABEL_MANAGED, BaseExecutor, ContainerState, JobSpec, Stream
from .docker_errors import (
    api_error,
    denied_message,
    engine_message,
    is_read_timeout,
    parse_time,
    raise_for_status,
    redact,
    registry_refusal,
)
from .docker_logs import READ_SIZE, followed_frames, frames
from .docker_spec import create_kwargs

if TYPE_CHECKING:
    from docker.models.containers import Container


__all__ = ["DockerExecutor"]

_STARTED = frozenset({"running", "paused", "restarting", "exited", "dead", "removing"})


class DockerExecutor(BaseExecutor):
    """Runs jobs as containers on one Docker engine.

    ``config["docker_host"]`` is an :class:`~container_manager.models.ExecutorHost` or an engine
    URL; optional ``timeout`` (seconds per engine call) and ``pool_size`` (connections).
    """

    #: What a job runs as on the engine (the Engine API's word for it).
    runs_as: ClassVar[str] = "container"
    #: A plain engine honours every field of the spec.
    supported_fields: ClassVar[frozenset[str]] = frozenset(SPEC_FIELDS)
    #: The engine follows a container's log until the container exits.
    follows_output: ClassVar[bool] = True

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.timeout = float(self.config.get("timeout", get_settings().ENGINE_TIMEOUT))
        self.pool_size = int(self.config.get("pool_size", 10))
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()

    # ---- the one translation point ------------------------------------------------

    @contextmanager
    def _engine(self, action: str) -> Iterator[None]:
        """Translate anything the SDK raises while doing ``action`` into our error tree."""
        try:
            yield
        except ContainerManagerError:
            raise
        except docker.errors.APIError as err:
            raise api_error(action, err) from err
        except (
            requests.exceptions.RequestException,
            docker.errors.DockerException,
            OSError,
        ) as err:
            raise ExecutorConnectionError(
                f"{action}: cannot reach the engine at {self.base_url}: {engine_message(err)}"
            ) from err
        except Exception as err:  # the SDK edge: anything else it may raise
            raise ExecutorError(f"{action}: {engine_message(err)}") from err

    @property
    def client(self) -> docker.DockerClient:
        """The SDK client, created on first use."""
        if self._client is None:
            with self._client_lock, self._engine("Connect to the engine"):
                if self._client is None:
                    self._client = self._connect()
        return self._client

    def _connect(self) -> docker.DockerClient:
        tls = self._tls_config()
        if not tls:
            client = docker.DockerClient(
                base_url=self.base_url,
                timeout=self.timeout,
                max_pool_size=self.pool_size,
                tls=False,
            )
            if self.base_url.startswith(("unix://", "npipe://")):
                # No proxy or CA bundle applies to a local socket: skip requests' lookup of
                # them in the environment, made on every request otherwise.
                client.api.trust_env = False
            return client
        # With TLS only the host's own CA and certificates count: requests would let
        # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace the host's CA (trust_env). So the
        # client is made without asking the engine (a pinned minimum API version), told not
        # to read the environment, and only then asks the engine for its API version (as
        # the SDK's own version detection does).
        client = docker.DockerClient(
            base_url=self.base_url,
            timeout=self.timeout,
            max_pool_size=self.pool_size,
            tls=tls,
            version=docker.constants.MINIMUM_DOCKER_API_VERSION,
        )
        client.api.trust_env = False
        client.api._version = str(client.api.version(api_version=False)["ApiVersion"])
        return client

    def _tls_config(self) -> docker.tls.TLSConfig | bool:
        host = self.host
        if host is None or not host.tls_enabled:
            return False
        try:
            return docker.tls.TLSConfig(
                client_cert=(host.tls_client_cert, host.tls_client_key)
                if host.tls_client_cert
                else None,
                ca_cert=host.tls_ca_cert or None,
                verify=(host.tls_ca_cert or True) if host.tls_verify else False,
            )
        except docker.errors.TLSParameterError as err:
            raise ConfigurationError(f"Host {host.name!r}: TLS configuration: {err}") from err

    def close(self) -> None:
        """Close the SDK client's connections."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def check(self) -> list[str]:
        problems = []
        try:
            parse_host(self.base_url)
        except docker.errors.DockerException as err:
            problems.append(f"{self.base_url}: {err}")
        try:
            self._tls_config()
        except ConfigurationError as err:
            problems.append(str(err))
        return problems

    # ---- launching ----------------------------------------------------------------

    def _validate_job(self, job: JobSource) -> None:
        """Raise ExecutorError when ``job`` cannot be run as given."""
        if problem := image_reference_problem(job.docker_image):
            raise ExecutorError(f"Invalid job: {problem}")
        try:
            JobSpec.from_job(job)
        except ContainerManagerError as err:
            raise ExecutorError(f"Invalid job: {err}") from err

    def launch_job(self, job: JobSource) -> tuple[bool, str]:
        """``(True, container_id)`` or ``(False, message with the engine's error)``."""
        try:
            self._validate_job(job)
            return True, self.run(JobSpec.from_job(job))
        except ContainerManagerError as err:
            return False, str(err)

    def _create_container(self, job: JobSource) -> str:
        return self.create(JobSpec.from_job(job))

    def create_container(self, job: JobSource) -> str:
        """Create (not start) the job's container; its id."""
        return self._create_container(job)

    def _start_container(self, job: JobSource, container_id: str) -> bool:
        """Start a created container; True, or ExecutorError."""
        with self._engine(f"Start container {container_id}"):
            self.client.containers.get(container_id).start()
        return True

    def _create_kwargs(self, spec: JobSpec) -> dict[str, Any]:
        return create_kwargs(spec)

    def _create(self, spec: JobSpec) -> Container:
        kwargs = self._create_kwargs(spec)
        try:
            with self._engine(f"Create container for image {spec.image!r}"):
                return self.client.containers.create(**kwargs)
        except ImageUnavailableError:
            if not spec.auto_pull:
                raise ImageUnavailableError(
                    f"Image {spec.image!r} is not on the host and the host does not pull images"
                ) from None
        except ExecutorError as err:
            existing = self._existing(spec.name, err)
            if existing is None:
                raise
            return existing
        self.pull_image(spec.image, spec.registry_auth)
        with self._engine(f"Create container for image {spec.image!r}"):
            return self.client.containers.create(**kwargs)

    def _existing(self, name: str, err: ExecutorError) -> Container | None:
        """After a name conflict, the container a previous try of this attempt created."""
        if err.status_code != 409:
            return None
        with self._engine(f"Find container {name}"):
            return self.client.containers.get(name)

    def create(self, spec: JobSpec) -> str:
        """Create the spec's container (or find the one a previous try created); its id."""
        return self._create(spec).id

    def run(self, spec: JobSpec) -> str:
        container = self._create(spec)
        if container.status not in _STARTED:
            try:
                with self._engine(f"Start container {container.id}"):
                    container.start()
            except ExecutorError:
                # Remove what we created; if that fails too, the start error is the one to tell.
                with suppress(ContainerManagerError):
                    self.cleanup(container.id)
                raise
        return container.id

    def pull_image(self, image: str, auth: RegistryAuth | None = None) -> bool:
        """Pull ``image``, with ``auth``'s credentials when given; True, or
        ImageUnavailableError with the registry's answer: ImageAccessDeniedError when the
        registry refuses the credentials (or asks for some)."""
        repository, tag = parse_repository_tag(image)
        kwargs = {"auth_config": auth.as_auth_config()} if auth else {}
        try:
            with self._engine(f"Pull image {image!r}"):
                self.client.images.pull(repository, tag=tag or "latest", **kwargs)
        except ExecutorConnectionError:
            raise
        except ExecutorError as err:
            refusal = registry_refusal(err.__cause__)
            if refusal is not None:
                raise ImageAccessDeniedError(denied_message(image, auth, refusal)) from err
            raise ImageUnavailableError(
                redact(f"Image {image!r} is not on the host and could not be pulled: {err}", auth)
            ) from err
        return True

    # ---- watching and harvesting ------------------------------------------------------

    def wait(self, container_id: str, timeout: float | None) -> int | None:
        with self._engine(f"Wait for container {container_id}"):
            try:
                result = self.client.api.wait(container_id, timeout=timeout)
            except requests.exceptions.RequestException as err:
                if is_read_timeout(err):
                    return None
                raise
        return int(result["StatusCode"])

    def inspect(self, container_id: str) -> ContainerState:
        with self._engine(f"Inspect container {container_id}"):
            state = self.client.api.inspect_container(container_id)["State"]
        status = state.get("Status", "unknown")
        return ContainerState(
            status=status,
            exit_code=state.get("ExitCode") if status in {"exited", "dead"} else None,
            oom_killed=bool(state.get("OOMKilled")),
            error=state.get("Error") or "",
            started_at=parse_time(state.get("StartedAt")),
            finished_at=parse_time(state.get("FinishedAt")),
        )

    def iter_output(self, container_id: str, stream: Stream) -> Iterator[bytes]:
        with self._engine(f"Read {stream} of container {container_id}"):
            chunks = self.client.api.logs(
                container_id,
                stdout=stream == "stdout",
                stderr=stream == "stderr",
                stream=True,
                follow=False,
            )
            yield from chunks

    def iter_outputs(self, container_id: str) -> Iterator[tuple[Stream, bytes]]:
        """Both streams in one logs request, demultiplexed here. The SDK's ``logs`` would
        take one request per stream, each after an inspect call to learn whether the
        container has a TTY; this executor's containers (and services) never do."""
        return self._log_frames(container_id, follow=False)

    def follow_outputs(self, container_id: str) -> Iterator[tuple[Stream, bytes]]:
        """Both streams as the container writes them, until it exits. The engine sends
        nothing while the container is silent, so only connecting has a deadline here."""
        return self._log_frames(container_id, follow=True)

    def _log_frames(self, container_id: str, *, follow: bool) -> Iterator[tuple[Stream, bytes]]:
        api = self.client.api
        # Followed, each line comes with the engine's timestamp: what tells a line the
        # engine sends twice (see followed_frames) from one the job printed twice.
        params = {"stdout": 1, "stderr": 1, "follow": int(follow), "timestamps": int(follow),
                  "tail": "all"}  # fmt: skip
        # A followed answer may be silent for as long as the job is: no read deadline.
        timeout = (self.timeout, None) if follow else self.timeout
        with self._engine(f"Read the output of {self.runs_as} {container_id}"):
            # The SDK's own request helpers, as its logs() uses them: the versioned URL and
            # the HttpHeaders of the Docker config file.
            url = api._url(f"/{self.runs_as}s/{{0}}/logs", container_id)
            response = api._get(url, params=params, stream=True, timeout=timeout)
            try:
                raise_for_status(response)
                chunks = response.iter_content(READ_SIZE)
                yield from (followed_frames if follow else frames)(chunks)
            finally:
                response.close()

    def tail_output(self, container_id: str, stream: Stream, lines: int) -> bytes:
        with self._engine(f"Tail {stream} of container {container_id}"):
            data = self.client.api.logs(
                container_id, stdout=stream == "stdout", stderr=stream == "stderr", tail=lines
            )
        return data if isinstance(data, bytes) else b""

    def find_container(self, name: str) -> str | None:
        try:
            with self._engine(f"Find container {name}"):
                return self.client.api.inspect_container(name)["Id"]
        except ContainerNotFoundError:
            return None

    def stop_container(self, container_id: str, grace: int | None = None) -> bool:
        grace = get_settings().STOP_GRACE_SECONDS if grace is None else grace
        try:
            with self._engine(f"Stop container {container_id}"):
                self.client.api.stop(container_id, timeout=grace)
        except ContainerNotFoundError:
            pass
        return True

    @contextmanager
    def _removing(self, container_id: str) -> Iterator[None]:
        """Remove a container: one already gone, or being removed, is fine."""
        try:
            with self._engine(f"Remove container {container_id}"):
                yield
        except ContainerNotFoundError:
            pass
        except ExecutorError as err:
            if err.status_code != 409:  # 409: a removal already in progress
                raise

    def cleanup(self, container_id: str) -> bool:
        with self._removing(container_id):
            self.client.containers.get(container_id).remove(force=True, v=True)
        return True

    def discard(self, container_id: str) -> None:
        """One request (``cleanup`` looks the container up first, as older code expects)."""
        with self._removing(container_id):
            self.client.api.remove_container(container_id, force=True, v=True)

    # ---- inspection and maintenance ------------------------------------------------

    def check_status(self, container_id: str) -> str:
        try:
            with self._engine(f"Status of container {container_id}"):
                return str(self.client.containers.get(container_id).status)
        except ContainerNotFoundError:
            return "not-found"

    def get_logs(self, container_id: str, tail: int | None = None) -> str:
        kwargs: dict[str, Any] = {"stdout": True, "stderr": True}
        if tail is not None:
            kwargs = {"tail": tail, **kwargs}
        try:
            with self._engine(f"Logs of container {container_id}"):
                raw = self.client.containers.get(container_id).logs(**kwargs)
        except ContainerNotFoundError:
            return f"Container not found: {container_id} (it was removed or never existed)"
        return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)

    def get_resource_usage(self, container_id: str) -> dict[str, Any]:
        with self._engine(f"Stats of container {container_id}"):
            raw = self.client.containers.get(container_id).stats(stream=False)
            if not isinstance(raw, dict):
                raw = next(iter(raw))
        memory = raw.get("memory_stats") or {}
        cpu = (raw.get("cpu_stats") or {}).get("cpu_usage") or {}
        precpu = (raw.get("precpu_stats") or {}).get("cpu_usage") or {}
        total = int(cpu.get("total_usage") or 0)
        system_delta = int((raw.get("cpu_stats") or {}).get("system_cpu_usage") or 0) - int(
            (raw.get("precpu_stats") or {}).get("system_cpu_usage") or 0
        )
        online = int((raw.get("cpu_stats") or {}).get("online_cpus") or 1)
        cpu_delta = total - int(precpu.get("total_usage") or 0)
        return {
            "memory_usage": int(memory.get("usage") or 0),
            "memory_peak": int(memory.get("max_usage") or memory.get("usage") or 0),
            "memory_limit": int(memory.get("limit") or 0),
            "cpu_usage": total / 1e9,
            "cpu_percent": (cpu_delta / system_delta * online * 100.0) if system_delta > 0 else 0.0,
        }

    def get_container_stats(self, container_id: str) -> dict[str, Any]:
        """Resource figures of a container (same as :meth:`get_resource_usage`)."""
        return self.get_resource_usage(container_id)

    def engine_restarted(
        self, container_id: str, since: datetime | None, watch: float
    ) -> bool | None:
        """An engine that shuts down (a restart without live restore) stops its containers
        with SIGTERM, then SIGKILL, as a job's own end could. Two facts tell them apart: the
        engine keeps its events in memory, so one that restarted since has no ``die`` of
        this container; and one that is shutting down closes its event streams. So: a
        stream of daemon events is opened (nothing flows on it), the engine is asked for the
        container's ``die`` since it started, and the stream is watched for ``watch``
        seconds. An engine that cannot be reached has gone away too."""
        api = self.client.api
        try:
            with self._engine("Watch the engine"):
                stream = api._get(
                    api._url("/events"),
                    params={"filters": json.dumps({"type": ["daemon"]})},
                    stream=True,
                    timeout=(self.timeout, watch),
                )
                raise_for_status(stream)
        except ExecutorConnectionError:
            return True
        try:
            return not self._saw_die(container_id, since) or self._closes(stream)
        finally:
            stream.close()

    def _saw_die(self, container_id: str, since: datetime | None) -> bool:
        """Whether the engine has the container's ``die`` event since ``since``."""
        started = int(since.timestamp()) - 1 if since else 0
        filters = {"container": [container_id], "event": ["die"]}
        try:
            with self._engine(f"Read the events of container {container_id}"):
                until = int(datetime.now().timestamp()) + 1
                events = self.client.api.events(since=started, until=until, filters=filters)
                return any(events)
        except ExecutorConnectionError:
            return False

    @staticmethod
    def _closes(stream: requests.Response) -> bool:
        """Whether the engine ends ``stream`` (it shuts down) before its read deadline."""
        try:
            for _ in stream.iter_content(1024):
                pass
        except requests.exceptions.RequestException as err:
            return not is_read_timeout(err)
        return True

    def list_containers(self) -> list[dict[str, Any]]:
        """This app's containers: labelled managed, and with every ``CONTAINER_LABELS`` label
        (so that two deployments sharing an engine never list, or clean up, each other's)."""
        scope = {**get_settings().CONTAINER_LABELS, LABEL_MANAGED: "true"}
        with self._engine("List containers"):
            containers = self.client.containers.list(
                all=True,
                filters={"label": [f"{key}={value}" for key, value in scope.items()]},
                # A container removed between the listing and its inspection is skipped.
                ignore_removed=True,
            )
        return [
            {
                "id": c.id,
                "name": c.name,
                "status": c.status,
                "labels": dict(c.labels),
                "image": (c.attrs.get("Config") or {}).get("Image", ""),
                "finished_at": parse_time((c.attrs.get("State") or {}).get("FinishedAt")),
            }
            for c in containers
        ]

    def health_check(self) -> bool:
        try:
            with self._engine("Ping the engine"):
                return bool(self.client.ping())
        except ContainerManagerError:
            return False

    def capacity(self) -> tuple[float, int] | None:
        """The engine's CPUs and memory (MB), from its info."""
        with self._engine("Engine info"):
            info = self.client.info()
        cpus, memory = info.get("NCPU"), info.get("MemTotal")
        if not cpus or not memory:
            return None
        return float(cpus), int(memory) // (1024 * 1024)

    def get_version(self) -> str:
        with self._engine("Engine version"):
            return str(self.client.version().get("Version", "unknown"))
