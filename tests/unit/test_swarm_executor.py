"""SwarmExecutor with the Docker SDK mocked at its edge (``docker.DockerClient``).

What is asked of the engine (the service's spec), how the service's task is read back
(each task state), the run-once launch, stopping, removal, listing, health, and the error
translation it shares with DockerExecutor.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from unittest.mock import Mock, call, patch

import docker
import pytest
import requests
from docker.errors import APIError, NotFound

from container_manager.exceptions import (
    ContainerNotFoundError,
    ExecutorConnectionError,
    ExecutorError,
    ImageUnavailableError,
)
from container_manager.executors import executor_class, get_executor
from container_manager.executors.base import (
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_MANAGED,
    ContainerState,
    JobSpec,
)
from container_manager.executors.swarm import (
    NO_CONTAINER_EXIT,
    SwarmExecutor,
    swarm_constraint,
)
from container_manager.testing.factories import ContainerJobFactory, ExecutorHostFactory
from tests.conftest import SESSION_ID, SESSION_LABEL
from tests.logs_answers import ENGINE, answer_logs, frame, logs_answer

pytestmark = pytest.mark.django_db

URL = "unix:///var/run/docker.sock"
SERVICE = "svc0123456789abcdefghijklm"
CONTAINER = "c" * 64
NOT_MANAGER = (
    'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" '
    "to connect this node to swarm and try again."
)


def _executor(**config) -> SwarmExecutor:
    return SwarmExecutor({"docker_host": URL, "start_timeout": 0.3, **config})


def _spec(**kwargs) -> JobSpec:
    kwargs.setdefault("argv", ["sh", "-c", "echo hi"])
    return JobSpec(job_id="job-1", attempt=2, image="busybox:latest", **kwargs)


def _task(
    state: str,
    *,
    exit_code: int | None = 0,
    container: str = CONTAINER,
    err: str = "",
    created: str = "2026-01-01T10:00:00.1Z",
    timestamp: str = "2026-01-01T10:00:05.25Z",
) -> dict:
    status: dict = {"State": state, "Timestamp": timestamp, "Message": state}
    if err:
        status["Err"] = err
    if container or exit_code is not None:
        status["ContainerStatus"] = {"ContainerID": container, "PID": 0, "ExitCode": exit_code}
    return {"ID": f"task-{state}", "CreatedAt": created, "Status": status}


def _not_found(what: str = "service") -> NotFound:
    return NotFound("404 Client Error: Not Found", explanation=f"{what} nonexistent not found")


@pytest.fixture
def sdk() -> Iterator[Mock]:
    """The patched ``docker.DockerClient`` instance, speaking API 1.42 (job mode)."""
    with patch("docker.DockerClient") as client_class:
        client = client_class.return_value
        client.api.api_version = "1.42"
        client.api.create_service.return_value = {"ID": SERVICE}
        client.api.tasks.return_value = [_task("running", exit_code=None)]
        yield client


def _created_kwargs(sdk: Mock) -> dict:
    sdk.api.create_service.assert_called_once()
    return sdk.api.create_service.call_args.kwargs


# ---- the service's spec ----------------------------------------------------------------------


def test_run_creates_a_run_once_service_named_after_the_attempt(sdk, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "STOP_GRACE_SECONDS": 3}
    spec = _spec(
        environment={"GREETING": "hello", "EMPTY": ""},
        working_directory="/work",
        memory_limit_mb=256,
        cpu_limit=1.5,
        extra_labels={SESSION_LABEL: SESSION_ID},
    )

    assert _executor().run(spec) == SERVICE

    kwargs = _created_kwargs(sdk)
    assert kwargs["name"] == "cm-job-1-2" == spec.name
    assert kwargs["mode"] == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    template = kwargs["task_template"]
    assert template["RestartPolicy"]["Condition"] == "none"
    assert template["Resources"] == {
        "Limits": {"NanoCPUs": 1_500_000_000, "MemoryBytes": 256 * 1024 * 1024, "Pids": 4096}
    }, "the job's limits and the DEFAULT_PIDS_LIMIT"
    container = template["ContainerSpec"]
    assert container["Image"] == "busybox:latest"
    assert container["Args"] == ["sh", "-c", "echo hi"], "argv as arguments: no shell added"
    assert container.get("Command") is None, "the image's entrypoint is kept, as docker run does"
    assert sorted(container["Env"]) == ["EMPTY=", "GREETING=hello"]
    assert container["Dir"] == "/work"
    assert container["StopGracePeriod"] == 3 * 10**9
    expected_labels = {
        SESSION_LABEL: SESSION_ID,
        LABEL_MANAGED: "true",
        LABEL_JOB: "job-1",
        LABEL_ATTEMPT: "2",
    }
    assert kwargs["labels"] == expected_labels, "labels on the service"
    assert container["Labels"] == expected_labels, "and on its task's container"
    assert "Placement" not in template


@dataclass(frozen=True)
class PlacedSpec(JobSpec):
    """A spec with placement constraints (the field JobSpec is to grow)."""

    placement_constraints: list[str] = field(default_factory=list)


def test_placement_constraints_come_from_the_spec(sdk):
    spec = PlacedSpec(
        job_id="job-1",
        attempt=1,
        image="busybox:latest",
        placement_constraints=["gpu", "region=eu", "node.role==worker", "zone!=b"],
    )

    _executor().run(spec)

    template = _created_kwargs(sdk)["task_template"]
    assert template["Placement"]["Constraints"] == [
        "node.labels.gpu==true",
        "node.labels.region==eu",
        "node.role==worker",
        "zone!=b",
    ]
    assert template["Resources"] == {"Limits": {"Pids": 4096}}, "no limits asked: the default"


@pytest.mark.parametrize(
    ("item", "constraint"),
    [
        ("gpu", "node.labels.gpu==true"),
        ("region=eu", "node.labels.region==eu"),
        (" tier = fast ", "node.labels.tier==fast"),
        ("node.hostname==box-1", "node.hostname==box-1"),
        ("node.labels.ssd!=true", "node.labels.ssd!=true"),
    ],
)
def test_swarm_constraint(item, constraint):
    assert swarm_constraint(item) == constraint


def test_an_engine_without_job_mode_gets_one_replica_that_is_never_restarted(sdk):
    sdk.api.api_version = "1.41"  # 20.10: job mode, but moby/moby#44312

    _executor().run(_spec(argv=[]))

    kwargs = _created_kwargs(sdk)
    assert kwargs["mode"] == {"replicated": {"Replicas": 1}}
    assert kwargs["task_template"]["RestartPolicy"]["Condition"] == "none"
    assert kwargs["task_template"]["ContainerSpec"].get("Args") is None, "the image's command"
    assert kwargs["task_template"]["ContainerSpec"].get("Env") is None


def test_building_the_executor_never_connects():
    with patch("docker.DockerClient") as client_class:
        executor = get_executor(ExecutorHostFactory(executor_type="swarm"))
        assert isinstance(executor, SwarmExecutor)
        assert executor_class("swarm") is SwarmExecutor
        client_class.assert_not_called()


def test_tls_settings_of_the_host_are_used(tmp_path):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("not really a certificate")
    host = ExecutorHostFactory(
        executor_type="swarm",
        connection_string="tcp://127.0.0.1:2376",
        tls_enabled=True,
        tls_verify=True,
        tls_ca_cert=str(tmp_path / "ca.pem"),
        tls_client_cert=str(tmp_path / "cert.pem"),
        tls_client_key=str(tmp_path / "key.pem"),
    )
    with patch("docker.DockerClient") as client_class:
        client_class.return_value.ping.return_value = True
        client_class.return_value.info.return_value = {
            "Swarm": {"ControlAvailable": True, "LocalNodeState": "active"}
        }
        assert SwarmExecutor({"docker_host": host}).health_check() is True
    tls = client_class.call_args.kwargs["tls"]
    assert isinstance(tls, docker.tls.TLSConfig)
    assert tls.cert == (str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    assert tls.verify == str(tmp_path / "ca.pem")


# ---- launching -------------------------------------------------------------------------------


def _answer(status, message, explanation):
    """An SDK error as the SDK makes it from an engine answer with ``status``."""
    response = requests.Response()
    response.status_code = status
    return APIError(message, response=response, explanation=explanation)


def test_run_again_finds_the_service_a_previous_try_created(sdk):
    sdk.api.create_service.side_effect = _answer(
        409,
        "409 Client Error for http+docker://localhost/v1.41/services/create: Conflict",
        "rpc error: code = AlreadyExists desc = name conflicts with an existing "
        "object: service cm-job-1-2 already exists",
    )
    sdk.api.inspect_service.return_value = {"ID": "existing-service"}

    assert _executor().run(_spec()) == "existing-service"
    sdk.api.inspect_service.assert_called_once_with("cm-job-1-2")
    sdk.api.tasks.assert_not_called()


def test_a_conflict_whose_service_is_gone_again_raises_the_conflict(sdk):
    sdk.api.create_service.side_effect = _answer(
        409, "409 Conflict", "service cm-job-1-2 already exists"
    )
    sdk.api.inspect_service.side_effect = _not_found()

    with pytest.raises(ExecutorError, match="already exists"):
        _executor().run(_spec())


def test_an_engine_that_is_not_a_swarm_manager_fails_the_launch_with_its_words(sdk):
    sdk.api.create_service.side_effect = APIError("503 Server Error", explanation=NOT_MANAGER)

    with pytest.raises(ExecutorError, match="not a swarm manager") as raised:
        _executor().run(_spec())
    assert not isinstance(raised.value, ExecutorConnectionError)
    assert isinstance(raised.value.__cause__, APIError), "raise ... from err"


def test_run_waits_until_the_task_runs(sdk):
    sdk.api.tasks.side_effect = [
        [],
        [_task("pending", exit_code=None, container="")],
        [_task("running", exit_code=None)],
    ]
    sdk.api.inspect_service.return_value = {"ID": SERVICE}

    assert _executor().run(_spec()) == SERVICE
    assert sdk.api.tasks.call_args == call(filters={"service": SERVICE})
    assert sdk.api.tasks.call_count == 3
    sdk.api.remove_service.assert_not_called()


def test_a_job_that_ran_and_failed_at_once_is_launched_not_a_launch_error(sdk):
    sdk.api.tasks.return_value = [_task("failed", exit_code=3, err="task: non-zero exit (3)")]

    assert _executor().run(_spec()) == SERVICE
    sdk.api.remove_service.assert_not_called()


def test_a_task_that_cannot_start_fails_the_launch_and_its_service_is_removed(sdk):
    error = (
        'starting container failed: OCI runtime create failed: exec: "/no/such/program": '
        "stat /no/such/program: no such file or directory: unknown"
    )
    sdk.api.tasks.return_value = [_task("failed", exit_code=127, err=error)]

    with pytest.raises(ExecutorError, match="/no/such/program") as raised:
        _executor().run(_spec(argv=["/no/such/program"]))
    assert not isinstance(raised.value, ImageUnavailableError)
    assert "cm-job-1-2" in str(raised.value)
    sdk.api.remove_service.assert_called_once_with(SERVICE)


def test_an_image_no_node_has_is_image_unavailable(sdk):
    sdk.api.tasks.return_value = [
        _task("rejected", container="", err="No such image: 127.0.0.1:1/missing:latest")
    ]
    sdk.api.remove_service.side_effect = requests.exceptions.ConnectionError("gone")

    with pytest.raises(ImageUnavailableError, match=r"busybox:latest.*No such image"):
        _executor().run(_spec())
    sdk.api.remove_service.assert_called_once_with(SERVICE)


def test_a_rejected_task_without_words_still_says_what_happened(sdk):
    sdk.api.tasks.return_value = [_task("rejected", container="")]

    with pytest.raises(ExecutorError, match="the task was rejected"):
        _executor().run(_spec())


def test_a_task_waiting_for_a_node_is_launched_at_once(sdk):
    waiting = _task(
        "pending",
        exit_code=None,
        container="",
        err="no suitable node (scheduling constraints not satisfied on 1 node)",
    )
    sdk.api.tasks.return_value = [waiting]

    assert _executor(start_timeout=30).run(_spec()) == SERVICE
    assert sdk.api.tasks.call_count == 1
    sdk.api.remove_service.assert_not_called()


def test_a_task_still_preparing_after_the_start_timeout_is_launched(sdk):
    sdk.api.tasks.return_value = [_task("preparing", exit_code=None, container="")]

    assert _executor(start_timeout=0.05).run(_spec()) == SERVICE
    sdk.api.remove_service.assert_not_called()


def test_launch_job_and_the_seed_conveniences(sdk):
    job = ContainerJobFactory(docker_image="busybox:latest", command="echo hello")

    assert _executor().launch_job(job) == (True, SERVICE)
    assert _executor().create_container(job) == SERVICE
    assert _executor().create(JobSpec.from_job(job)) == SERVICE
    sdk.api.inspect_service.return_value = {"ID": SERVICE}
    assert _executor()._start_container(job, SERVICE) is True
    sdk.api.inspect_service.side_effect = _not_found()
    with pytest.raises(ContainerNotFoundError):
        _executor()._start_container(job, "gone")


def test_launch_job_reports_the_engines_words(sdk):
    sdk.api.create_service.side_effect = APIError("503", explanation=NOT_MANAGER)
    job = ContainerJobFactory(docker_image="busybox:latest")

    launched, message = _executor().launch_job(job)
    assert launched is False
    assert "not a swarm manager" in message


def test_launch_job_rejects_a_malformed_image_without_asking_the_engine(sdk):
    job = ContainerJobFactory(docker_image="busybox:latest")
    job.docker_image = "Not An Image"

    launched, message = _executor().launch_job(job)
    assert launched is False
    assert "Not An Image" in message
    sdk.api.create_service.assert_not_called()


# ---- waiting and reading the task ------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "exit_code"),
    [
        (_task("complete", exit_code=0), 0),
        (_task("complete", exit_code=None), 0),
        (_task("failed", exit_code=3, err="task: non-zero exit (3)"), 3),
        (_task("shutdown", exit_code=137), 137),
        (_task("shutdown", exit_code=None, container=""), NO_CONTAINER_EXIT),
        (_task("rejected", exit_code=0, container="", err="No such image: x"), NO_CONTAINER_EXIT),
        (_task("orphaned", exit_code=None, container=""), NO_CONTAINER_EXIT),
        (_task("remove", exit_code=143), 143),
    ],
)
def test_wait_returns_the_exit_code_of_a_task_that_ended(sdk, task, exit_code):
    sdk.api.tasks.return_value = [task]

    assert _executor().wait(SERVICE, timeout=5) == exit_code


@pytest.mark.parametrize(
    "state", ["new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"]
)
def test_wait_times_out_on_a_task_that_has_not_ended(sdk, state):
    sdk.api.tasks.return_value = [_task(state, exit_code=None)]

    assert _executor().wait(SERVICE, timeout=0.5) is None
    assert sdk.api.tasks.call_count >= 2, "polled, not asked once"


def test_wait_polls_until_the_task_ends(sdk):
    sdk.api.tasks.side_effect = [
        [],
        [_task("running", exit_code=None)],
        [_task("complete", exit_code=0)],
    ]
    sdk.api.inspect_service.return_value = {"ID": SERVICE}

    assert _executor().wait(SERVICE, timeout=None) == 0
    assert sdk.api.tasks.call_count == 3


def test_wait_follows_the_newest_task(sdk):
    sdk.api.tasks.return_value = [
        _task("failed", exit_code=1, created="2026-01-01T10:00:00.9Z"),
        _task("complete", exit_code=0, created="2026-01-01T10:00:00.12Z"),
        _task("shutdown", exit_code=2, created="2026-01-01T10:00:00.1Z"),
    ]

    assert _executor().wait(SERVICE, timeout=1) == 1, ".9 is later than .12 (not as text)"


def test_wait_and_inspect_of_an_unknown_service(sdk):
    sdk.api.tasks.side_effect = _not_found()

    with pytest.raises(ContainerNotFoundError, match="not found"):
        _executor().wait("nonexistent", timeout=1)
    with pytest.raises(ContainerNotFoundError):
        _executor().inspect("nonexistent")


def test_a_service_without_tasks_that_is_then_gone(sdk):
    sdk.api.tasks.return_value = []
    sdk.api.inspect_service.side_effect = _not_found()

    with pytest.raises(ContainerNotFoundError):
        _executor().wait(SERVICE, timeout=1)


FINISHED = datetime(2026, 1, 1, 10, 0, 5, 250000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (_task("pending", exit_code=None, container=""), ContainerState(status="created")),
        (_task("starting", exit_code=None), ContainerState(status="created")),
        (_task("running", exit_code=None), ContainerState(status="running")),
        (
            _task("complete", exit_code=0),
            ContainerState(status="exited", exit_code=0, finished_at=FINISHED),
        ),
        (
            _task("failed", exit_code=3, err="task: non-zero exit (3)"),
            ContainerState(status="exited", exit_code=3, finished_at=FINISHED),
        ),
        (
            _task("failed", exit_code=127, err="starting container failed: no such file"),
            ContainerState(
                status="exited",
                exit_code=127,
                error="starting container failed: no such file",
                finished_at=FINISHED,
            ),
        ),
        (
            _task("shutdown", exit_code=137),
            ContainerState(status="exited", exit_code=137, finished_at=FINISHED),
        ),
        (
            _task("rejected", container="", err="No such image: x"),
            ContainerState(
                status="dead",
                exit_code=NO_CONTAINER_EXIT,
                error="No such image: x",
                finished_at=FINISHED,
            ),
        ),
        (
            _task("orphaned", exit_code=None, container=""),
            ContainerState(status="dead", exit_code=NO_CONTAINER_EXIT, finished_at=FINISHED),
        ),
        (
            _task("remove", exit_code=0),
            ContainerState(status="removing", exit_code=0, finished_at=FINISHED),
        ),
    ],
)
def test_inspect_maps_each_task_state(sdk, task, expected):
    sdk.api.tasks.return_value = [task]
    sdk.api.inspect_container.side_effect = _not_found("container")  # not on this node

    state = _executor().inspect(SERVICE)
    assert state == expected
    assert state.has_exited is (expected.status in {"exited", "dead"})


def test_inspect_before_the_orchestrator_made_the_task(sdk):
    sdk.api.tasks.return_value = []
    sdk.api.inspect_service.return_value = {"ID": SERVICE}

    assert _executor().inspect(SERVICE) == ContainerState(status="created")
    assert _executor().check_status(SERVICE) == "created"


def test_inspect_reads_oom_and_start_time_from_a_container_on_this_node(sdk):
    sdk.api.tasks.return_value = [_task("failed", exit_code=137, err="task: non-zero exit (137)")]
    sdk.api.inspect_container.return_value = {
        "State": {"OOMKilled": True, "StartedAt": "2026-01-01T10:00:01.5Z"}
    }

    state = _executor().inspect(SERVICE)
    assert state.oom_killed is True
    assert state.exit_code == 137
    assert state.started_at == datetime(2026, 1, 1, 10, 0, 1, 500000, tzinfo=UTC)
    sdk.api.inspect_container.assert_called_once_with(CONTAINER)


@pytest.mark.parametrize(
    ("task", "word"),
    [
        (_task("assigned", exit_code=None, container=""), "created"),
        (_task("running", exit_code=None), "running"),
        (_task("complete", exit_code=0), "exited"),
        (_task("failed", exit_code=1), "exited"),
        (_task("rejected", container="", err="x"), "dead"),
        (_task("mystery", exit_code=None), "mystery"),
    ],
)
def test_check_status_maps_the_task_state(sdk, task, word):
    sdk.api.tasks.return_value = [task]

    assert _executor().check_status(SERVICE) == word


def test_check_status_of_an_unknown_service(sdk):
    sdk.api.tasks.side_effect = _not_found()

    assert _executor().check_status("nonexistent") == "not-found"


# ---- output ----------------------------------------------------------------------------------


def test_stdout_and_stderr_are_read_apart(sdk):
    sdk.api.service_logs.side_effect = lambda *args, **kwargs: iter(
        [b"out 1\n", b"out 2\n"] if kwargs["stdout"] else [b"err\n"]
    )
    executor = _executor()

    assert list(executor.iter_output(SERVICE, "stdout")) == [b"out 1\n", b"out 2\n"]
    assert list(executor.iter_output(SERVICE, "stderr")) == [b"err\n"]
    assert sdk.api.service_logs.call_args_list == [
        call(SERVICE, stdout=True, stderr=False, follow=False, is_tty=False),
        call(SERVICE, stdout=False, stderr=True, follow=False, is_tty=False),
    ]


def test_both_streams_are_read_in_one_service_logs_request(sdk):
    answer_logs(sdk.api, logs_answer(frame(1, b"out\n") + frame(2, b"err\n")))

    assert list(_executor().iter_outputs(SERVICE)) == [("stdout", b"out\n"), ("stderr", b"err\n")]
    assert sdk.api._get.call_args.args == (f"{ENGINE}/services/{SERVICE}/logs",)
    sdk.api.service_logs.assert_not_called()


def test_output_of_an_unknown_service(sdk):
    sdk.api.service_logs.side_effect = _not_found()

    with pytest.raises(ContainerNotFoundError):
        list(_executor().iter_output("nonexistent", "stdout"))


def test_get_logs_combines_both_streams(sdk):
    sdk.api.service_logs.return_value = iter([b"out\n", b"err \xff\n"])

    assert _executor().get_logs(SERVICE) == "out\nerr \ufffd\n"
    sdk.api.service_logs.assert_called_once_with(
        SERVICE, stdout=True, stderr=True, follow=False, tail="all", is_tty=False
    )


def test_get_logs_with_a_tail(sdk):
    sdk.api.service_logs.return_value = iter([b"last\n"])

    assert _executor().get_logs(SERVICE, tail=1) == "last\n"
    assert sdk.api.service_logs.call_args.kwargs["tail"] == 1


def test_get_logs_of_an_unknown_service_explains_instead_of_raising(sdk):
    sdk.api.service_logs.side_effect = _not_found()

    text = _executor().get_logs("nonexistent")
    assert "not found" in text.lower()
    assert "nonexistent" in text


# ---- stopping and removing -------------------------------------------------------------------


def test_stop_stops_the_tasks_container_and_waits_for_the_task_to_end(sdk, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "STOP_GRACE_SECONDS": 4}
    sdk.api.tasks.side_effect = [
        [_task("running", exit_code=None)],
        [_task("running", exit_code=None)],
        [_task("failed", exit_code=137, err="task: non-zero exit (137)")],
    ]

    assert _executor().stop_container(SERVICE) is True
    sdk.api.stop.assert_called_once_with(CONTAINER, timeout=4)
    assert sdk.api.tasks.call_count == 3, "returns once the task reports its end"
    sdk.api.remove_service.assert_not_called()


def test_stop_with_an_explicit_grace(sdk):
    sdk.api.tasks.side_effect = [[_task("running", exit_code=None)], [_task("failed")]]

    assert _executor().stop_container(SERVICE, grace=0) is True
    sdk.api.stop.assert_called_once_with(CONTAINER, timeout=0)


def test_stop_of_a_task_that_ended_does_nothing(sdk):
    sdk.api.tasks.return_value = [_task("complete", exit_code=0)]

    assert _executor().stop_container(SERVICE, grace=0) is True
    sdk.api.stop.assert_not_called()
    sdk.api.remove_service.assert_not_called()


def test_stop_of_an_unknown_service_is_true(sdk):
    sdk.api.tasks.side_effect = _not_found()

    assert _executor().stop_container("nonexistent", grace=0) is True
    sdk.api.stop.assert_not_called()


def test_stop_of_a_container_on_another_node_removes_the_service(sdk):
    sdk.api.stop.side_effect = _not_found("container")

    assert _executor().stop_container(SERVICE, grace=0) is True
    sdk.api.remove_service.assert_called_once_with(SERVICE)


@pytest.mark.parametrize("tasks", [[], [_task("pending", exit_code=None, container="")]])
def test_stop_of_a_task_without_a_container_yet_removes_the_service(sdk, tasks):
    sdk.api.tasks.return_value = tasks
    sdk.api.inspect_service.return_value = {"ID": SERVICE}

    assert _executor().stop_container(SERVICE, grace=0) is True
    sdk.api.stop.assert_not_called()
    sdk.api.remove_service.assert_called_once_with(SERVICE)


def test_stop_when_the_service_is_removed_meanwhile(sdk):
    sdk.api.tasks.side_effect = [[_task("running", exit_code=None)], _not_found()]

    assert _executor().stop_container(SERVICE, grace=0) is True


def test_cleanup_removes_the_service_and_is_idempotent(sdk):
    sdk.api.remove_service.side_effect = [True, _not_found()]
    executor = _executor()

    assert executor.cleanup(SERVICE) is True
    assert executor.cleanup(SERVICE) is True
    assert sdk.api.remove_service.call_args_list == [call(SERVICE), call(SERVICE)]


def test_cleanup_reports_other_engine_errors(sdk):
    sdk.api.remove_service.side_effect = APIError("500", explanation="raft: no leader")

    with pytest.raises(ExecutorError, match="raft: no leader"):
        _executor().cleanup(SERVICE)


# ---- resource figures ------------------------------------------------------------------------


def test_resource_usage_of_a_task_on_this_node(sdk):
    sdk.containers.get.return_value.stats.return_value = {
        "memory_stats": {"usage": 1000, "max_usage": 2000, "limit": 4000},
        "cpu_stats": {"cpu_usage": {"total_usage": 3_000_000_000}},
    }

    usage = _executor().get_resource_usage(SERVICE)
    assert usage["memory_usage"] == 1000
    assert usage["memory_peak"] == 2000
    assert usage["cpu_usage"] == 3.0
    sdk.containers.get.assert_called_once_with(CONTAINER)


@pytest.mark.parametrize(
    "tasks", [[], [_task("pending", exit_code=None, container="")], [_task("running")]]
)
def test_resource_usage_without_a_container_here_is_zeros(sdk, tasks):
    sdk.api.tasks.return_value = tasks
    sdk.api.inspect_service.return_value = {"ID": SERVICE}
    sdk.containers.get.side_effect = _not_found("container")  # on another node

    usage = _executor().get_resource_usage(SERVICE)
    assert usage["memory_usage"] == 0
    assert usage["cpu_usage"] == 0.0


def test_resource_usage_of_an_unknown_service(sdk):
    sdk.api.tasks.side_effect = _not_found()

    with pytest.raises(ContainerNotFoundError):
        _executor().get_resource_usage("nonexistent")
    with pytest.raises(ContainerNotFoundError):
        _executor().get_container_stats("nonexistent")


# ---- listing and maintenance -----------------------------------------------------------------


def _service(service_id: str, name: str, image: str = "busybox:latest") -> dict:
    return {
        "ID": service_id,
        "Spec": {
            "Name": name,
            "Labels": {LABEL_MANAGED: "true", SESSION_LABEL: SESSION_ID},
            "TaskTemplate": {"ContainerSpec": {"Image": image}},
        },
    }


def test_list_containers_lists_the_apps_services_by_label(sdk):
    sdk.api.services.return_value = [
        _service("done", "cm-a-1", image="busybox:latest@sha256:" + "0" * 64),
        _service("busy", "cm-b-1"),
        _service("vanished", "cm-c-1"),
    ]
    tasks = {
        "done": [_task("complete", exit_code=0)],
        "busy": [_task("running", exit_code=None)],
    }

    def tasks_of(filters):
        if filters["service"] not in tasks:
            raise _not_found()
        return tasks[filters["service"]]

    sdk.api.tasks.side_effect = tasks_of

    listed = _executor().list_containers()
    assert sdk.api.services.call_args.kwargs["filters"] == {
        "label": [f"{SESSION_LABEL}={SESSION_ID}", f"{LABEL_MANAGED}=true"]
    }
    assert listed == [
        {
            "id": "done",
            "name": "cm-a-1",
            "status": "exited",
            "labels": {LABEL_MANAGED: "true", SESSION_LABEL: SESSION_ID},
            "image": "busybox:latest",
            "finished_at": FINISHED,
        },
        {
            "id": "busy",
            "name": "cm-b-1",
            "status": "running",
            "labels": {LABEL_MANAGED: "true", SESSION_LABEL: SESSION_ID},
            "image": "busybox:latest",
            "finished_at": None,
        },
    ]


def test_cleanup_old_containers_removes_services_that_ended_before_the_cutoff(sdk):
    sdk.api.services.return_value = [_service("old", "cm-a-1"), _service("busy", "cm-b-1")]
    sdk.api.tasks.side_effect = lambda filters: (
        [_task("complete")] if filters["service"] == "old" else [_task("running")]
    )

    removed = _executor().cleanup_old_containers(datetime(2026, 1, 2, tzinfo=UTC))
    assert removed == 1
    sdk.api.remove_service.assert_called_once_with("old")


def test_health_check_of_a_swarm_manager(sdk):
    sdk.ping.return_value = True
    sdk.info.return_value = {"Swarm": {"ControlAvailable": True, "LocalNodeState": "active"}}

    assert _executor().health_check() is True


@pytest.mark.parametrize(
    "swarm",
    [
        {"ControlAvailable": False, "LocalNodeState": "active"},  # a worker node
        {"ControlAvailable": False, "LocalNodeState": "inactive"},  # not in a swarm
        {"ControlAvailable": True, "LocalNodeState": "pending"},
        None,
    ],
)
def test_health_check_is_false_when_the_engine_is_no_active_manager(sdk, swarm):
    sdk.ping.return_value = True
    sdk.info.return_value = {"Swarm": swarm}

    assert _executor().health_check() is False


def test_health_check_is_false_when_the_engine_does_not_answer(sdk):
    sdk.ping.side_effect = requests.exceptions.ConnectionError("refused")

    assert _executor().health_check() is False
    sdk.ping.side_effect = None
    sdk.ping.return_value = False
    assert _executor().health_check() is False


def test_version(sdk):
    sdk.version.return_value = {"Version": "20.10.24"}

    assert _executor().get_version() == "20.10.24"


# ---- error translation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (requests.exceptions.ConnectionError("refused"), ExecutorConnectionError),
        (docker.errors.DockerException("no engine"), ExecutorConnectionError),
        (APIError("500", explanation="rpc error: raft unavailable"), ExecutorError),
        (NotFound("404", explanation="service x not found"), ContainerNotFoundError),
        (ValueError("odd SDK answer"), ExecutorError),
    ],
)
def test_sdk_errors_are_translated_once_with_their_cause(sdk, raised, expected):
    sdk.api.tasks.side_effect = raised

    with pytest.raises(expected) as caught:
        _executor().wait(SERVICE, timeout=1)
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised
    assert f"service {SERVICE}" in str(caught.value), "says what it was doing"


def test_an_engine_that_does_not_answer_is_a_connection_error_everywhere():
    with patch("docker.DockerClient", side_effect=docker.errors.DockerException("refused")):
        executor = SwarmExecutor({"docker_host": "tcp://127.0.0.1:1"})
        assert executor.health_check() is False
        for action in (
            lambda: executor.run(_spec()),
            lambda: executor.check_status("any"),
            lambda: executor.list_containers(),
            lambda: executor.stop_container("any", grace=0),
            lambda: executor.cleanup("any"),
        ):
            with pytest.raises(ExecutorConnectionError, match=re.escape("tcp://127.0.0.1:1")):
                action()


def test_the_tasks_log_is_capped_as_a_containers(sdk, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "ENGINE_LOG_MAX_BYTES": 4096}
    _executor().run(_spec())
    assert _created_kwargs(sdk)["task_template"]["LogDriver"] == {
        "Name": "json-file",
        "Options": {"max-size": "2048", "max-file": "2"},
    }
