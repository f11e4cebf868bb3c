"""TLS with verification on. Redis (`rediss://`): a real `cekura-worker run` runs jobs end to end through the
broker and both streams of a `redis-server` that speaks only TLS. The Cekura API (`https://`): the client calls
the simulator serving HTTPS, trusting it through `CEKURA_CA_BUNDLE`, and refuses a certificate from another CA.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from config.settings import Settings, load_settings
from tests.support import free_port, running_workers, service_env, wait_for, wait_redis_ready
from worker.client import Client
from worker.ops.health import check
from worker.runtime.connection import connect
from worker.runtime.heartbeat import live_workers

PASSWORD = "secret-pw-for-tls-test"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("openssl") is None or shutil.which("redis-server") is None,
        reason="needs the openssl CLI and redis-server",
    ),
]


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca_file: str
    other_ca_file: str

    @property
    def url(self) -> str:
        return f"rediss://:{PASSWORD}@localhost:{self.port}/0"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
        "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=directory,
    )  # fmt: skip


def _make_certificates(directory: Path) -> None:
    """A throwaway CA, a server certificate it signs for localhost, and an unrelated second CA."""
    _make_ca(directory, "ca")
    _make_ca(directory, "other-ca")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr", cwd=directory,
    )  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", "server.ext", "-out", "server.crt", cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ca.crt, other-ca.crt, and server.crt/server.key for localhost and 127.0.0.1, signed by ca.crt."""
    directory = tmp_path_factory.mktemp("tls")
    _make_certificates(directory)
    return directory


@pytest.fixture(scope="module")
def tls_redis(certificates: Path) -> Iterator[TlsRedis]:
    directory = certificates
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", "server.crt", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt",
            "--tls-auth-clients", "no", "--requirepass", PASSWORD,
            "--save", "", "--appendonly", "no", "--dir", str(directory),
        ],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = TlsRedis(port, str(directory / "ca.crt"), str(directory / "other-ca.crt"))
    try:
        with redis.Redis.from_url(server.url, ssl_ca_certs=server.ca_file, socket_timeout=1) as probe:
            if not wait_redis_ready(process, probe, 10):
                raise RuntimeError(f"the TLS redis-server on port {port} did not answer PING")
        yield server
    finally:
        process.terminate()
        process.wait(10)


def test_jobs_run_end_to_end_over_tls_redis(
    tls_redis: TlsRedis, make_tls_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_tls_settings(redis_ca_bundle=tls_redis.ca_file)
    env = service_env(settings, cekura_idle_wake_ms=100, cekura_shutdown_timeout_s=5)
    log_path = tmp_path / "worker.log"
    with running_workers(env, log_path) as supervisor, Client(settings) as client:
        wait_for(lambda: live_workers(client.redis, settings), 30, "the worker's heartbeat over TLS", log_path)
        wait_for(lambda: check(settings)[0], 30, "the healthcheck over TLS to pass", log_path)

        # One job through the broker (Client.submit enqueues the start message), one through the request stream.
        direct = client.submit("agent.auto_fetch", {"agent_id": 3}, metadata={"via": "client"})
        request = {"kind": "scenario.agent", "params": {"user_message": "more detail"}, "job_id": "tls-via-stream"}
        client.redis.xadd(settings.cekura_requests_stream, {"request": json.dumps(request)})
        wait_for(lambda: client.status("tls-via-stream"), 60, "the stream request to be recorded", log_path)
        for job_id in (direct, "tls-via-stream"):
            event = client.wait(job_id, timeout=60)
            assert event["status"] == "completed", (event["error"], log_path.read_text()[-3000:])
        events = {event["job_id"]: event for event in client.results()}
        assert set(events) == {direct, "tls-via-stream"}
        assert json.loads(events[direct]["metadata"]) == {"via": "client"}

        status = subprocess.run(
            [sys.executable, "-m", "worker.cli", "status"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        os.killpg(supervisor.pid, signal.SIGTERM)
        assert supervisor.wait(20) == 0

    assert status.returncode == 0, status.stderr
    assert f"rediss://:***@localhost:{tls_redis.port}/0" in status.stdout
    assert "Jobs in flight: 0" in status.stdout
    assert "Results stream cekura:results: 2 entries" in status.stdout
    assert PASSWORD not in status.stdout + status.stderr
    worker_log = log_path.read_text()
    assert "worker_started" in worker_log
    assert PASSWORD not in worker_log


def test_tls_redis_with_an_untrusted_certificate_is_refused(
    tls_redis: TlsRedis, make_tls_settings: Callable[..., Settings]
) -> None:
    trusted = make_tls_settings(redis_ca_bundle=tls_redis.ca_file)
    untrusted = make_tls_settings(redis_ca_bundle=tls_redis.other_ca_file)
    system_cas = make_tls_settings(redis_ca_bundle=None)

    verified = connect(trusted)
    assert verified.ping()
    verified.connection_pool.disconnect()
    for settings in (untrusted, system_cas):
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            connect(settings, retry=Retry(NoBackoff(), 0), retry_on_error=[]).ping()
        ok, reason = check(settings)
        assert not ok
        assert reason.startswith(f"redis unreachable at rediss://:***@localhost:{tls_redis.port}/0: ")
        assert "certificate verify failed" in reason
        assert PASSWORD not in reason

    plaintext = redis.Redis(
        host="127.0.0.1", port=tls_redis.port, password=PASSWORD, socket_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    with pytest.raises(redis.ConnectionError):  # the server speaks TLS only
        plaintext.ping()
    plaintext.close()


@pytest.fixture
def make_tls_settings(tls_redis: TlsRedis, settings: Settings) -> Iterator[Callable[..., Settings]]:
    """The shared test settings pointed at the TLS server (db 0 of a private server, flushed around each test)."""
    flush = redis.Redis.from_url(tls_redis.url, ssl_ca_certs=tls_redis.ca_file)
    flush.flushdb()

    def make(**overrides: object) -> Settings:
        values = {**settings.model_dump(), "redis_url": tls_redis.url, "cekura_heartbeat_interval_s": 1.0, **overrides}
        return load_settings(**values)

    yield make
    flush.flushdb()
    flush.close()


def test_the_cekura_client_trusts_the_apis_certificate_through_the_ca_bundle_and_refuses_others(
    certificates: Path, settings: Settings
) -> None:
    from actors.kinds import KINDS
    from simulator import SimConfig, start_in_thread
    from tests.conftest import SIM_KEY
    from worker.cekura.client import CekuraClient
    from worker.errors import TransientError

    kind = KINDS["metric.clean_description"]
    params = kind.validate({"agent": 1, "metric_description": "over TLS", "eval_type": "boolean"})
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certificates / "server.crt", certificates / "server.key")
    with start_in_thread(SimConfig(api_key=SIM_KEY, duration_s=0.2, ssl_context=server_context)) as sim:
        assert sim.url.startswith("https://")

        def client(ca_bundle: Path) -> CekuraClient:
            values = {**settings.model_dump(), "cekura_api_url": sim.url, "cekura_ca_bundle": str(ca_bundle)}
            return CekuraClient(load_settings(**values))

        trusting = client(certificates / "ca.crt")
        progress_id = trusting.start(kind, params).progress_id
        assert trusting.progress(kind, params, progress_id)[0]
        trusting.close()
        served = sim.stats()["requests_total"]
        assert served == 2

        refusing = client(certificates / "other-ca.crt")
        with pytest.raises(TransientError, match=r"connection failed .*certificate verify failed"):
            refusing.start(kind, params)
        refusing.close()
        assert sim.stats()["requests_total"] == served  # refused during the handshake: no request was sent
