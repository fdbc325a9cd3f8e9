"""Models: engine hosts, jobs, one row per launch attempt, environment templates.

Status strings exist once, in :class:`JobStatus`. Every status change goes through a
transition method of :class:`ContainerJob`, which writes only the fields it changes and
only if the job is still in the state the caller saw (a conditional UPDATE), so that a
worker whose lease was taken over can never overwrite the new owner's record.

The rooms: :mod:`.status` (the status type), :mod:`.validators` (fields' validators and
parsers), :mod:`.hosts` (hosts, templates, registry credentials), :mod:`.jobs` (jobs),
:mod:`.attempts` (their attempts), :mod:`.bookkeeping` (workers' heartbeats, the tally).
Everything is imported from here; migrations name validators by their path here.
"""

from .attempts import JobAttempt
from .bookkeeping import JobTally, WorkerHeartbeat
from .hosts import EnvironmentVariableTemplate, ExecutorHost, RegistryCredential
from .jobs import DEFAULT_QUEUE, ContainerJob
from .status import JobStatus
from .validators import (
    nul_errors,
    parse_labels,
    validate_command,
    validate_engine_url,
    validate_environment_text,
    validate_image_reference,
    validate_labels,
    validate_reference,
    working_directory_error,
)

#: The name migration 0005 gives the password reference's validator.
_reference_validator = validate_reference

__all__ = [
    "DEFAULT_QUEUE",
    "ContainerJob",
    "EnvironmentVariableTemplate",
    "ExecutorHost",
    "JobAttempt",
    "JobStatus",
    "JobTally",
    "RegistryCredential",
    "WorkerHeartbeat",
    "_reference_validator",
    "nul_errors",
    "parse_labels",
    "validate_command",
    "validate_engine_url",
    "validate_environment_text",
    "validate_image_reference",
    "validate_labels",
    "validate_reference",
    "working_directory_error",
]
