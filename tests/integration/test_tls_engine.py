"""A real TLS engine: ``tcp://`` with ``--tlsverify`` and client certificates.

The test makes its own CA, a server certificate for 127.0.0.1 (IP SAN) and a client
certificate, starts a dedicated engine that requires them, and runs a real job through the
Worker over TLS. Then it checks how TLS trouble shows: an unrelated CA and a missing client
certificate both fail the health check and the launch with words that name the certificate
trouble. Key material never appears in a log record or in anything recorded.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db import models

from container_manager.executors import get_executor
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt, JobStatus
from container_manager.queue import submit
from container_manager.testing.images import TEST_IMAGE, build_busybox_image
from container_manager.worker import Worker
from tests.conftest import _require
from tests.engines import DedicatedEngine, free_port

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

# Words the SDK and OpenSSL use for certificate trouble.
TLS_TROUBLE = ("certificate", "ssl", "tls")


# ---- certificates ------------------------------------------------------------------------------


@dataclass
class Pki:
    """Paths of the test's CA, server and client material, and a second, unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path

    @property
    def client_key_pem(self) -> str:
        return self.client_key.read_text()


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: Any, path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _certificate(
    subject: str,
    key: Any,
    issuer: tuple[Any, Any] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> Any:
    """A certificate for ``key``, signed by ``issuer`` (certificate, key) or self-signed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        # Key identifiers: Python 3.13 verifies with VERIFY_X509_STRICT, which wants them.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(cert: Any, path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_pki(directory: Path) -> Pki:
    ca_key = _key()
    ca = _certificate("container-jobs test CA", ca_key, None, ca=True)
    server_key, client_key, other_key = _key(), _key(), _key()
    server = _certificate("127.0.0.1", server_key, (ca, ca_key), server=True)
    client = _certificate("container-jobs client", client_key, (ca, ca_key))
    other_ca = _certificate("an unrelated CA", other_key, None, ca=True)
    return Pki(
        ca=_write_cert(ca, directory / "ca.pem"),
        server_cert=_write_cert(server, directory / "server-cert.pem"),
        server_key=_write_key(server_key, directory / "server-key.pem"),
        client_cert=_write_cert(client, directory / "cert.pem"),
        client_key=_write_key(client_key, directory / "key.pem"),
        other_ca=_write_cert(other_ca, directory / "other-ca.pem"),
    )


# ---- the engine --------------------------------------------------------------------------------


@dataclass
class TlsEngine:
    engine: DedicatedEngine
    url: str
    pki: Pki


@pytest.fixture(scope="module")
def tls_engine(tmp_path_factory) -> Iterator[TlsEngine]:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        _require("the cryptography package is not installed (pip install -e '.[test]')")
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    port = free_port()
    engine = DedicatedEngine(
        "tls",
        extra=[
            "--tlsverify",
            f"--tlscacert={pki.ca}",
            f"--tlscert={pki.server_cert}",
            f"--tlskey={pki.server_key}",
            f"--host=tcp://127.0.0.1:{port}",
        ],
    )
    try:
        engine.start()
    except RuntimeError as err:
        _require(f"cannot start a dedicated TLS engine: {err}")
    try:
        with engine.client() as client:  # over its unix socket
            build_busybox_image(client)
        yield TlsEngine(engine, f"tcp://127.0.0.1:{port}", pki)
    finally:
        engine.destroy()


def tls_host(tls_engine: TlsEngine, name: str, **tls: Any) -> ExecutorHost:
    pki = tls_engine.pki
    fields: dict[str, Any] = {
        "tls_ca_cert": str(pki.ca),
        "tls_client_cert": str(pki.client_cert),
        "tls_client_key": str(pki.client_key),
        **tls,
    }
    host = ExecutorHost(
        name=name,
        connection_string=tls_engine.url,
        executor_type="docker",
        tls_enabled=True,
        tls_verify=True,
        auto_pull_images=False,
        **fields,
    )
    host.full_clean()
    host.save()
    return host


@pytest.fixture
def logs(caplog) -> Any:
    """Every log record of every logger, from DEBUG up."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="container_manager")
    return caplog


# ---- no key material anywhere ------------------------------------------------------------------


def key_leaks(text: str, key_pem: str) -> list[str]:
    """What of the key ``text`` shows: its PEM armour or any 40-character slice of its body."""
    body = "".join(line for line in key_pem.splitlines() if not line.startswith("-----"))
    flat = "".join(text.split())
    found = [marker for marker in ("PRIVATE KEY", "BEGIN EC", "BEGIN RSA") if marker in text]
    found += [body[i : i + 40] for i in range(len(body) - 39) if body[i : i + 40] in flat]
    return found


def recorded_text() -> list[str]:
    """Every text value the app recorded: jobs, attempts, hosts."""
    values: list[str] = []
    for model in (ContainerJob, JobAttempt, ExecutorHost):
        names = [
            f.name
            for f in model._meta.concrete_fields
            if isinstance(f, models.CharField | models.TextField)
        ]
        for row in model.objects.values_list(*names):
            values += [str(v) for v in row if v]
    return values


def assert_no_key_material(logs, key_pem: str) -> None:
    texts = [logs.text, *recorded_text()]
    for record in logs.records:
        texts.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            texts.append(repr(record.exc_info[1]))
    leaks = [leak for text in texts for leak in key_leaks(text, key_pem)]
    assert not leaks, f"key material found: {leaks[:3]}"
    assert logs.records, "there were log records to look through"


def names_tls_trouble(message: str) -> bool:
    return any(word in message.lower() for word in TLS_TROUBLE)


# ---- the tests ---------------------------------------------------------------------------------


def ca_bundle_from_the_environment(monkeypatch, path: Path) -> None:
    """What requests reads unless told not to: it must never replace the host's own CA."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(path))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(path))


def test_a_job_runs_to_completion_over_tls(tls_engine, logs, settings, monkeypatch):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "POLL_INTERVAL": 0.05}
    ca_bundle_from_the_environment(monkeypatch, tls_engine.pki.other_ca)
    host = tls_host(tls_engine, "tls-engine")
    job = submit(host=host, image=TEST_IMAGE, command=["sh", "-c", "echo over tls; exit 0"])

    assert get_executor(host).health_check() is True
    assert get_executor(host).get_version()
    Worker(concurrency=1, burst=True, shutdown_timeout=10).run()

    job.refresh_from_db()
    assert (job.status, job.exit_code, job.stdout_log) == (JobStatus.COMPLETED, 0, "over tls\n")
    with tls_engine.engine.client() as client:
        assert client.containers.list(all=True, filters={"id": job.container_id}) == [], "removed"
    assert_no_key_material(logs, tls_engine.pki.client_key_pem)


def test_an_unrelated_ca_fails_health_and_launch_naming_the_certificate(
    tls_engine, logs, monkeypatch
):
    ca_bundle_from_the_environment(monkeypatch, tls_engine.pki.ca)  # never a way around
    host = tls_host(tls_engine, "wrong-ca", tls_ca_cert=str(tls_engine.pki.other_ca))
    job = submit(host=host, image=TEST_IMAGE, command="echo never")
    executor = get_executor(host)

    assert executor.health_check() is False
    launched, message = executor.launch_job(job)
    assert launched is False
    assert "certificate verify failed" in message.lower(), message
    assert tls_engine.url.removeprefix("tcp://") in message or tls_engine.url in message

    # Through the worker: the job waits (never failed while the engine cannot be reached),
    # and what is logged names the trouble.
    worker = Worker(concurrency=1, burst=True, shutdown_timeout=0.5)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            "unreachable" in r.getMessage() for r in logs.records
        ):
            time.sleep(0.05)
    finally:
        worker.stop()
        thread.join(30)
    job.refresh_from_db()
    assert job.status not in JobStatus.terminal(), "not failed because of the engine"
    warnings = [r.getMessage() for r in logs.records if "unreachable" in r.getMessage()]
    assert warnings and names_tls_trouble(warnings[0]), warnings
    assert_no_key_material(logs, tls_engine.pki.client_key_pem)


def test_without_a_client_certificate_the_engine_refuses(tls_engine, logs):
    host = tls_host(tls_engine, "no-client-cert", tls_client_cert="", tls_client_key="")
    job = submit(host=host, image=TEST_IMAGE, command="echo never")
    executor = get_executor(host)

    assert executor.health_check() is False
    launched, message = executor.launch_job(job)
    assert launched is False
    assert names_tls_trouble(message), message
    assert_no_key_material(logs, tls_engine.pki.client_key_pem)


def test_plain_tcp_without_tls_is_refused(tls_engine):
    host = ExecutorHost.objects.create(
        name="no-tls", connection_string=tls_engine.url, auto_pull_images=False
    )

    assert get_executor(host).health_check() is False
