"""The executor-neutral description of one attempt: what every executor receives.

A leaf: it imports no model and no executor. The worker builds a :class:`JobSpec` from a
job (``ContainerJob.spec()``), resolves its secret references, and hands it to an executor.
Also here: container naming, the app's labels, and the parsing and checking of the spec's
fields that needs no host (mount strings, users, capabilities, image references).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

from .exceptions import InvalidJobError

__all__ = [
    "ATTEMPT_ENV",
    "LABEL_ATTEMPT",
    "LABEL_JOB",
    "LABEL_MANAGED",
    "SPEC_FIELDS",
    "EngineHost",
    "JobSource",
    "JobSpec",
    "Mount",
    "PolicyHost",
    "RegistryAuth",
    "container_name",
    "image_registry",
    "parse_capabilities",
    "parse_entrypoint",
    "parse_mounts",
    "parse_user",
    "shm_refusal",
]

LABEL_MANAGED = "container_manager.managed"
LABEL_JOB = "container_manager.job"
LABEL_ATTEMPT = "container_manager.attempt"
#: A job whose environment names this variable (any value) gets it set, at every launch, to
#: the number of the attempt the container runs (1, 2, ...): the Tasks backend asks for it.
ATTEMPT_ENV = "CONTAINER_JOB_ATTEMPT"

MountType = Literal["volume", "bind", "tmpfs"]
MOUNT_TYPES: tuple[MountType, ...] = ("volume", "bind", "tmpfs")

#: Bounds checked at submission.
MAX_SHM_SIZE_MB = 64 * 1024
#: Where an executor mounts the memory of ``shm_size_mb`` when its engine has no ShmSize.
SHM_PATH = "/dev/shm"
MAX_PIDS_LIMIT = 1_000_000
MAX_TMPFS_MB = 64 * 1024
MAX_GPUS = 64
MAX_MOUNTS = 64
#: Size caps, checked before any parsing (splitting 32 KiB with shlex takes ~40 ms; put long
#: input in a mount or the environment).
MAX_COMMAND_CHARS = 32 * 1024
MAX_ENTRYPOINT_CHARS = 32 * 1024
MAX_ENVIRONMENT_CHARS = 256 * 1024
MAX_LABELS = 64
MAX_LABEL_VALUE_CHARS = 255
MAX_SECRETS = 256

# A pragmatic subset of the distribution reference grammar: [registry[:port]/]path[:tag][@digest]
_IMAGE_REF = re.compile(
    r"(?:(?P<registry>[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?"
)
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
_CAPABILITY = re.compile(r"(?:CAP_)?[A-Z][A-Z_]{1,31}")
_USER = re.compile(r"(?P<uid>[0-9]{1,10})(?::(?P<gid>[0-9]{1,10}))?")
_MAX_ID = 2**32 - 2


def container_name(job_id: object, attempt: int) -> str:
    """The deterministic container name of a job attempt: a repeated create finds it."""
    return f"cm-{job_id}-{attempt}"


def image_registry(image: str) -> str:
    """The registry host (``host[:port]``) an image reference names; ``docker.io`` when it
    names none (a first part without ``.``, ``:`` or ``localhost`` is a path, as the engine
    reads it)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def is_image_reference(value: str) -> bool:
    """Whether ``value`` is a well-formed image reference."""
    return len(value) <= 500 and _IMAGE_REF.fullmatch(value) is not None


def image_reference_problem(value: str) -> str:
    """What is wrong with an image reference ('' when nothing is)."""
    if not value or not value.strip():
        return "An image is required (for example 'busybox:latest')."
    if not is_image_reference(value):
        return (
            f"{value[:100]!r} is not a valid image reference: expected"
            " [registry/]name[:tag][@sha256:digest] with a lower-case name."
        )
    return ""


@dataclass(frozen=True)
class Mount:
    """One mount of a job's container."""

    type: MountType
    target: str
    source: str = ""
    read_only: bool = False
    size_mb: int | None = None

    @classmethod
    def parse(cls, value: str | Mapping[str, Any]) -> Mount:
        """A mount from ``{"type": ..., "target": ...}`` or ``"volume:NAME:/target[:ro]"``,
        ``"bind:/host/path:/target[:ro|:rw]"``, ``"tmpfs:/target:SIZE_MB"``. A bind is
        read-only unless it says ``rw`` (or ``read_only: false``). InvalidJobError names
        what is wrong."""
        if isinstance(value, str):
            return cls._from_text(value)
        if not isinstance(value, Mapping):
            raise InvalidJobError("a mount is a mapping or a 'type:source:/target' string")
        unknown = set(value) - {"type", "source", "target", "read_only", "size_mb"}
        if unknown:
            raise InvalidJobError(f"unknown mount keys: {', '.join(sorted(map(str, unknown)))}")
        kind = value.get("type")
        if kind not in MOUNT_TYPES:
            raise InvalidJobError("mount type must be volume, bind or tmpfs")
        read_only = value.get("read_only", kind == "bind")
        size = value.get("size_mb")
        if not isinstance(read_only, bool):
            raise InvalidJobError("a mount's read_only must be true or false")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            raise InvalidJobError("a mount's size_mb must be a whole number")
        mount = cls(kind, _text(value.get("target")), _text(value.get("source")), read_only, size)
        mount.check()
        return mount

    @classmethod
    def _from_text(cls, text: str) -> Mount:
        kind, _, rest = text.partition(":")
        parts = rest.split(":")
        if kind == "tmpfs":
            if len(parts) != 2 or not parts[1].isdigit():
                raise InvalidJobError("a tmpfs mount is written tmpfs:/target:SIZE_MB")
            mount = cls("tmpfs", parts[0], size_mb=int(parts[1]))
        elif kind in ("volume", "bind"):
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise InvalidJobError(f"a {kind} mount is written {kind}:SOURCE:/target[:ro|:rw]")
            mode = parts[2] if len(parts) == 3 else ("ro" if kind == "bind" else "rw")
            mount = cls(kind, parts[1], parts[0], read_only=mode == "ro")  # type: ignore[arg-type]
        else:
            raise InvalidJobError("mount type must be volume, bind or tmpfs")
        mount.check()
        return mount

    def check(self) -> None:
        """Raise InvalidJobError for a mount that no engine could honour."""
        if not self.target.startswith("/") or self.target.rstrip("/") == "":
            raise InvalidJobError("a mount target must be an absolute path other than /")
        if ".." in self.target.split("/") or "\0" in self.target:
            raise InvalidJobError("a mount target cannot contain '..' or NUL")
        if self.type == "volume" and not _VOLUME_NAME.fullmatch(self.source):
            raise InvalidJobError(
                "a volume name is letters, digits, '_', '.', '-', starting with a letter or digit"
            )
        if self.type == "bind" and (
            not self.source.startswith("/") or ".." in self.source.split("/") or "\0" in self.source
        ):
            raise InvalidJobError("a bind source must be an absolute host path without '..'")
        if self.type == "tmpfs":
            if self.source:
                raise InvalidJobError("a tmpfs mount has no source")
            if self.size_mb is None or not 1 <= self.size_mb <= MAX_TMPFS_MB:
                raise InvalidJobError(f"a tmpfs mount needs a size of 1 to {MAX_TMPFS_MB} MB")
        elif self.size_mb is not None:
            raise InvalidJobError("only a tmpfs mount has a size")

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ("", None)}


def _text(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidJobError("a mount's source and target must be text")
    return value


def parse_mounts(values: Sequence[str | Mapping[str, Any]] | None) -> list[Mount]:
    """Mounts from their dict or string forms; targets must be unique."""
    if values is None:
        return []
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise InvalidJobError("mounts must be a list")
    if len(values) > MAX_MOUNTS:
        raise InvalidJobError(f"at most {MAX_MOUNTS} mounts")
    mounts = [Mount.parse(v) for v in values]
    targets = [m.target.rstrip("/") for m in mounts]
    if len(set(targets)) != len(targets):
        raise InvalidJobError("two mounts have the same target")
    return mounts


def parse_entrypoint(value: object) -> list[str]:
    """An entrypoint: a list of non-empty strings without NUL (empty: the image's own)."""
    if value in (None, ""):
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidJobError("the entrypoint must be a list of strings")
    if sum(len(v) + 1 for v in value) > MAX_ENTRYPOINT_CHARS:
        raise InvalidJobError(f"the entrypoint is longer than {MAX_ENTRYPOINT_CHARS} characters")
    if any(not v or "\0" in v for v in value):
        raise InvalidJobError("entrypoint parts must be non-empty and contain no NUL")
    return list(value)


def parse_user(value: str) -> tuple[int, int | None] | None:
    """``"UID"`` or ``"UID:GID"`` as numbers; None for an empty value (the image's user)."""
    if not value:
        return None
    match = _USER.fullmatch(value)
    if match is None:
        raise InvalidJobError(
            "a user is numeric: UID or UID:GID (names are not honoured everywhere)"
        )
    uid, gid = int(match["uid"]), int(match["gid"]) if match["gid"] is not None else None
    if uid > _MAX_ID or (gid is not None and gid > _MAX_ID):
        raise InvalidJobError(f"user and group ids go up to {_MAX_ID}")
    return uid, gid


def parse_capabilities(value: object) -> list[str]:
    """Capability names, upper case without the ``CAP_`` prefix (``["NET_ADMIN"]``)."""
    if value in (None, ""):
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidJobError("capabilities must be a list of names such as NET_ADMIN")
    names = [v.strip().upper() for v in value]
    if not all(_CAPABILITY.fullmatch(n) for n in names):
        raise InvalidJobError("a capability is a name such as NET_ADMIN or CAP_NET_ADMIN")
    return sorted({n.removeprefix("CAP_") for n in names})


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for pulling the image: resolved by the worker, never stored."""

    registry: str
    username: str
    password: str = field(repr=False)

    def as_auth_config(self) -> dict[str, str]:
        """The engine's auth config (``X-Registry-Auth``)."""
        return {
            "username": self.username,
            "password": self.password,
            "serveraddress": self.registry,
        }


#: The optional fields of a spec, by the names jobs and executors' ``supported_fields`` use.
SPEC_FIELDS: tuple[str, ...] = (
    "entrypoint",
    "user",
    "mounts",
    "network",
    "secret_environment",
    "registry_credential",
    "gpus",
    "shm_size_mb",
    "pids_limit",
    "read_only_rootfs",
    "cap_add",
    "cap_drop",
    "privileged",
)


@dataclass(frozen=True)
class JobSpec:
    """Everything an engine needs to run one attempt of a job.

    ``secrets`` holds resolved secret values (from ``secret_environment`` references) and
    ``registry_auth`` resolved credentials: both exist only in the worker's memory, and
    :meth:`describe` (what an attempt row records) names the secrets without their values.
    """

    job_id: str
    attempt: int
    image: str
    argv: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    working_directory: str = ""
    memory_limit_mb: int | None = None
    cpu_limit: float | None = None
    auto_pull: bool = True
    extra_labels: dict[str, str] = field(default_factory=dict)
    #: Where the job may run, for executors that place work themselves (Swarm): name=value
    #: labels a node must carry, or constraints in the engine's own syntax.
    placement_constraints: list[str] = field(default_factory=list)
    #: Network mode or network name for the container, or None for the engine's default.
    network_mode: str | None = None
    entrypoint: list[str] = field(default_factory=list)
    user: str = ""
    mounts: tuple[Mount, ...] = ()
    #: Secret environment: NAME -> reference (``env:VAR``, ``file:/path``) before resolving.
    secret_references: dict[str, str] = field(default_factory=dict)
    #: Secret environment: NAME -> value, once the worker resolved the references.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    #: The registry of the job's credential (its password is resolved into registry_auth).
    registry_credential: str = ""
    registry_username: str = ""
    registry_auth: RegistryAuth | None = field(default=None, repr=False)
    gpus: int | None = None
    shm_size_mb: int | None = None
    pids_limit: int | None = None
    read_only_rootfs: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    #: Secure defaults every executor applies where its engine can.
    no_new_privileges: bool = True
    init: bool = True
    #: Whether the engine merges stdout and stderr into one stream (Kubernetes): the output
    #: is then recorded as stdout, and the attempt's record says so.
    merged_output: bool = False

    @property
    def name(self) -> str:
        return container_name(self.job_id, self.attempt)

    @property
    def labels(self) -> dict[str, str]:
        return {
            **self.extra_labels,
            LABEL_MANAGED: "true",
            LABEL_JOB: self.job_id,
            LABEL_ATTEMPT: str(self.attempt),
        }

    @classmethod
    def from_job(cls, job: Any, attempt: int | None = None) -> JobSpec:
        """The spec of a :class:`~container_manager.models.ContainerJob`'s attempt, its
        secrets resolved (``job.resolved_spec(attempt)``)."""
        spec: JobSpec = job.resolved_spec(attempt)
        return spec

    @property
    def full_environment(self) -> dict[str, str]:
        """The environment the container gets: the job's, then the resolved secrets."""
        return {**self.environment, **self.secrets}

    def requested(self) -> set[str]:
        """The optional fields (of :data:`SPEC_FIELDS`) this spec sets."""
        values = {
            "entrypoint": self.entrypoint,
            "user": self.user,
            "mounts": self.mounts,
            "network": self.network_mode not in (None, ""),
            "secret_environment": self.secret_references or self.secrets,
            "registry_credential": self.registry_credential or self.registry_auth,
            "gpus": self.gpus,
            "shm_size_mb": self.shm_size_mb,
            "pids_limit": self.pids_limit,
            "read_only_rootfs": self.read_only_rootfs,
            "cap_add": self.cap_add,
            "cap_drop": self.cap_drop,
            "privileged": self.privileged,
        }
        return {name for name, value in values.items() if value}

    def with_secrets(
        self, secrets: Mapping[str, str], registry_auth: RegistryAuth | None = None
    ) -> JobSpec:
        """This spec with resolved secret values (and registry credentials)."""
        return replace(self, secrets=dict(secrets), registry_auth=registry_auth)

    def describe(self) -> dict[str, Any]:
        """What ran, for the attempt's record: secrets by name only, no credentials."""
        merged = {"merged_output": True} if self.merged_output else {}
        return {
            "image": self.image,
            "entrypoint": self.entrypoint,
            "argv": self.argv,
            "environment": sorted(self.environment),
            "secret_environment": sorted(self.secret_references or self.secrets),
            "working_directory": self.working_directory,
            "user": self.user,
            "mounts": [m.as_dict() for m in self.mounts],
            "network": self.network_mode or "",
            "registry": self.registry_credential,
            "registry_username": self.registry_username,
            "memory_limit_mb": self.memory_limit_mb,
            "cpu_limit": self.cpu_limit,
            "gpus": self.gpus,
            "shm_size_mb": self.shm_size_mb,
            "pids_limit": self.pids_limit,
            "read_only_rootfs": self.read_only_rootfs,
            "cap_add": list(self.cap_add),
            "cap_drop": list(self.cap_drop),
            "privileged": self.privileged,
            "no_new_privileges": self.no_new_privileges,
            "init": self.init,
            "placement_constraints": self.placement_constraints,
            **merged,
        }


def shm_refusal(spec: JobSpec, executor: str, made_as: str) -> dict[str, str]:
    """``{"shm_size_mb": why}`` when ``spec`` asks for ``shm_size_mb`` and mounts something
    of its own at /dev/shm, for an executor that makes ``shm_size_mb`` a mount there
    (``made_as``: what it mounts); ``{}`` otherwise."""
    if spec.shm_size_mb and any(m.target.rstrip("/") == SHM_PATH for m in spec.mounts):
        return {
            "shm_size_mb": f"The {executor} executor makes shm_size_mb {made_as} at /dev/shm:"
            " the job mounts something there already."
        }
    return {}


class EngineHost(Protocol):
    """What an executor reads of a host (an ``ExecutorHost`` row is one): its engine and how
    to reach it. A protocol, so that executors need not import the models."""

    @property
    def pk(self) -> Any: ...
    @property
    def name(self) -> str: ...
    @property
    def connection_string(self) -> str: ...
    @property
    def executor_type(self) -> str: ...
    @property
    def tls_enabled(self) -> bool: ...
    @property
    def tls_verify(self) -> bool: ...
    @property
    def tls_ca_cert(self) -> str: ...
    @property
    def tls_client_cert(self) -> str: ...
    @property
    def tls_client_key(self) -> str: ...
    @property
    def auto_pull_images(self) -> bool: ...
    @property
    def insecure_tcp(self) -> bool: ...


class PolicyHost(EngineHost, Protocol):
    """What the host policy reads of a host (an ``ExecutorHost`` row is one)."""

    @property
    def allow_root(self) -> bool: ...
    @property
    def allow_privileged(self) -> bool: ...
    @property
    def allowed_bind_prefixes(self) -> Any: ...
    @property
    def allowed_networks(self) -> Any: ...
    @property
    def allowed_capabilities(self) -> Any: ...
    @property
    def gpus(self) -> int: ...
    @property
    def cpu_capacity(self) -> float | None: ...
    @property
    def memory_capacity_mb(self) -> int | None: ...
    def allows_bind(self, source: str) -> bool: ...
    def allows_network(self, network: str) -> bool: ...


class JobSource(Protocol):
    """What the seed-compatible executor methods read of a job (a ``ContainerJob`` is one)."""

    @property
    def docker_image(self) -> str: ...
    def resolved_spec(self, attempt: int | None = None) -> JobSpec: ...
