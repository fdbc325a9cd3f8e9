"""How the kubernetes executor maps the job spec onto the Job, its pod and its Secrets
(``kubernetes_spec``: plain dicts, as the API receives them), and what it refuses: at
submission (naming the field and the executor), or at launch before anything is asked of the
cluster."""

from __future__ import annotations

import base64
import json

import pytest

from container_manager.exceptions import InvalidJobError, PermanentLaunchError
from container_manager.executors import kubernetes_spec
from container_manager.executors.kubernetes import KubernetesExecutor, cluster_url
from container_manager.models import ContainerJob
from container_manager.queue import submit
from container_manager.spec import SPEC_FIELDS, JobSpec, Mount, RegistryAuth
from container_manager.testing.factories import ExecutorHostFactory

URL = cluster_url("/etc/kube/config", "jobs")


def _spec(**fields) -> JobSpec:
    fields.setdefault("job_id", "0b7e")
    fields.setdefault("attempt", 2)
    fields.setdefault("image", "busybox:1.36")
    return JobSpec(**fields)


def _container(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]["containers"][0]


def test_a_plain_spec_is_a_run_once_job_with_the_apps_labels():
    spec = _spec(argv=["echo", "hi"], extra_labels={"team": "a"})

    manifest = kubernetes_spec.job_manifest(spec, ttl=False)

    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    assert manifest["metadata"]["name"] == "cm-0b7e-2"
    labels = manifest["metadata"]["labels"]
    assert labels == {
        "team": "a",
        "container_manager.managed": "true",
        "container_manager.job": "0b7e",
        "container_manager.attempt": "2",
    }
    job = manifest["spec"]
    assert (job["backoffLimit"], job["completions"], job["parallelism"]) == (0, 1, 1)
    assert "ttlSecondsAfterFinished" not in job
    assert job["template"]["metadata"]["labels"] == labels
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["terminationGracePeriodSeconds"] == 5
    assert "nodeSelector" not in pod and "volumes" not in pod and "imagePullSecrets" not in pod
    assert _container(manifest) == {
        "name": "job",
        "image": "busybox:1.36",
        "imagePullPolicy": "IfNotPresent",
        "args": ["echo", "hi"],
        "securityContext": {"allowPrivilegeEscalation": False},
    }


def test_ttl_where_the_cluster_honours_it():
    manifest = kubernetes_spec.job_manifest(_spec(), ttl=True)
    assert manifest["spec"]["ttlSecondsAfterFinished"] == kubernetes_spec.TTL_AFTER_FINISHED


def test_every_mapped_field_reaches_the_container():
    spec = _spec(
        entrypoint=["/bin/sh", "-c"],
        argv=["echo $A"],
        environment={"A": "1"},
        working_directory="/work",
        user="1000:2000",
        memory_limit_mb=256,
        cpu_limit=1.5,
        gpus=2,
        read_only_rootfs=True,
        cap_add=("NET_ADMIN",),
        cap_drop=("ALL",),
        auto_pull=False,
        placement_constraints=["disk=ssd", "gpu", "node.labels.zone==eu-1"],
        mounts=(
            Mount("volume", "/data", "claim-a"),
            Mount("tmpfs", "/scratch", size_mb=64),
            Mount("volume", "/ro", "claim-b", read_only=True),
        ),
        shm_size_mb=128,
    )

    manifest = kubernetes_spec.job_manifest(spec, ttl=False)
    container = _container(manifest)
    pod = manifest["spec"]["template"]["spec"]

    assert container["command"] == ["/bin/sh", "-c"]
    assert container["args"] == ["echo $A"]
    assert container["env"] == [{"name": "A", "value": "1"}]
    assert container["workingDir"] == "/work"
    assert container["imagePullPolicy"] == "Never"
    assert container["resources"] == {
        "limits": {"memory": "256Mi", "cpu": "1500m", "nvidia.com/gpu": "2"},
        "requests": {"memory": "256Mi", "cpu": "1500m"},
    }
    assert container["securityContext"] == {
        "runAsUser": 1000,
        "runAsGroup": 2000,
        "readOnlyRootFilesystem": True,
        "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
        "allowPrivilegeEscalation": False,
    }
    assert pod["nodeSelector"] == {"disk": "ssd", "gpu": "true", "zone": "eu-1"}
    assert pod["volumes"] == [
        {"name": "m0", "persistentVolumeClaim": {"claimName": "claim-a", "readOnly": False}},
        {"name": "m1", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        {"name": "m2", "persistentVolumeClaim": {"claimName": "claim-b", "readOnly": True}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "128Mi"}},
    ]
    assert container["volumeMounts"] == [
        {"name": "m0", "mountPath": "/data", "readOnly": False},
        {"name": "m1", "mountPath": "/scratch", "readOnly": False},
        {"name": "m2", "mountPath": "/ro", "readOnly": True},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]


def test_privileged_drops_the_no_new_privileges_default():
    context = _container(kubernetes_spec.job_manifest(_spec(privileged=True), ttl=False))
    assert context["securityContext"] == {"privileged": True}


def test_a_user_without_group_and_a_cpu_only_limit():
    container = _container(kubernetes_spec.job_manifest(_spec(user="7", cpu_limit=0.25), ttl=False))
    assert container["securityContext"]["runAsUser"] == 7
    assert "runAsGroup" not in container["securityContext"]
    assert container["resources"] == {"limits": {"cpu": "250m"}, "requests": {"cpu": "250m"}}


def test_secrets_are_a_secret_of_the_attempt_never_in_the_job():
    spec = _spec(environment={"A": "1"}).with_secrets({"TOKEN": "s3cr3t", "KEY": "k"})

    manifest = kubernetes_spec.job_manifest(spec, ttl=False)
    secrets = kubernetes_spec.secret_manifests(spec)

    assert "s3cr3t" not in json.dumps(manifest)
    assert _container(manifest)["env"] == [
        {"name": "A", "value": "1"},
        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "cm-0b7e-2-env", "key": "KEY"}}},
        {
            "name": "TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "cm-0b7e-2-env", "key": "TOKEN"}},
        },
    ]
    assert secrets == [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "cm-0b7e-2-env", "labels": spec.labels},
            "type": "Opaque",
            "stringData": {"TOKEN": "s3cr3t", "KEY": "k"},
        }
    ]


def test_a_registry_credential_is_a_pull_secret_of_the_attempt():
    spec = _spec(image="r.example.com/app:1").with_secrets(
        {}, RegistryAuth("r.example.com", "robot", "pw")
    )

    manifest = kubernetes_spec.job_manifest(spec, ttl=False)
    (secret,) = kubernetes_spec.secret_manifests(spec)

    assert manifest["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "cm-0b7e-2-pull"}]
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    config = json.loads(secret["stringData"][".dockerconfigjson"])
    entry = config["auths"]["r.example.com"]
    assert (entry["username"], entry["password"]) == ("robot", "pw")
    assert base64.b64decode(entry["auth"]) == b"robot:pw"
    assert "pw" not in json.dumps(manifest)


def test_no_secrets_no_secret_objects():
    assert kubernetes_spec.secret_manifests(_spec()) == []


# ---- refused -----------------------------------------------------------------------------


def test_bind_mounts_and_shm_beside_a_dev_shm_mount_are_refused():
    errors = kubernetes_spec.spec_refusals(
        _spec(mounts=(Mount("bind", "/dev/shm", "/srv"),), shm_size_mb=64)
    )
    assert set(errors) == {"mounts", "shm_size_mb"}
    assert "bind mounts" in errors["mounts"]


def test_refused_at_launch_before_anything_is_asked_of_the_cluster(settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "NETWORK_MODE": "none"}
    executor = KubernetesExecutor({"docker_host": URL})

    with pytest.raises(PermanentLaunchError, match="cannot honour pids_limit"):
        executor.run(_spec(pids_limit=10))
    with pytest.raises(PermanentLaunchError, match="cannot honour network 'backend'"):
        executor.run(_spec(network_mode="backend"))
    with pytest.raises(PermanentLaunchError, match="bind mounts"):
        executor.run(_spec(mounts=(Mount("bind", "/data", "/srv"),)))
    assert executor.cluster._api is None, "no client was made"
    assert executor.refusals(_spec(network_mode="none")) == {}, "the operator's default"


def test_supported_fields_are_the_spec_fields_it_maps():
    assert set(SPEC_FIELDS) > kubernetes_spec.SUPPORTED_FIELDS
    assert set(SPEC_FIELDS) - kubernetes_spec.SUPPORTED_FIELDS == {"pids_limit"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("asked", "message"),
    [
        ({"pids_limit": 10}, "The kubernetes executor (host k8s-1) cannot honour pids_limit."),
        ({"network": "backend"}, "The kubernetes executor cannot honour network 'backend'"),
    ],
)
def test_what_a_cluster_cannot_honour_is_refused_at_submission(asked, message):
    host = ExecutorHostFactory(
        name="k8s-1",
        executor_type="kubernetes",
        connection_string=URL,
        allowed_networks=["backend"],
    )
    with pytest.raises(InvalidJobError) as raised:
        submit(host=host, image="busybox:latest", command="true", **asked)

    assert message in str(raised.value)
    assert ContainerJob.objects.count() == 0


@pytest.mark.django_db
def test_a_job_naming_no_network_is_accepted(settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "NETWORK_MODE": "none"}
    host = ExecutorHostFactory(name="k8s-1", executor_type="kubernetes", connection_string=URL)
    assert submit(host=host, image="busybox:latest", command="true").pk is not None


@pytest.mark.django_db
def test_a_bind_mount_is_refused_at_submission_with_the_reason():
    host = ExecutorHostFactory(
        name="k8s-1",
        executor_type="kubernetes",
        connection_string=URL,
        allowed_bind_prefixes=["/srv"],
    )
    with pytest.raises(InvalidJobError, match="cannot honour bind mounts"):
        submit(host=host, image="busybox:latest", command="true", mounts=["bind:/srv:/data"])


def test_the_record_says_the_output_is_merged_and_there_is_no_init():
    executor = KubernetesExecutor({"docker_host": URL})
    record = executor.effective(_spec()).describe()
    assert record["merged_output"] is True
    assert record["init"] is False
    assert "merged_output" not in _spec().describe(), "only where it is so"
