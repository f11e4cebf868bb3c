"""CEKURA_REDIS_MIN_REPLICAS (issue 20): with it set, a job is accepted only once a replica holds its record, a
request entry stays unacknowledged in its stream until then, and a job's end is replicated before its step is done.
A private primary and replica, as real `redis-server` processes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis

from config.settings import Settings, load_settings
from simulator import SimulatorHandle
from tests.conftest import FAST, SIM_KEY
from tests.support import RedisServer, free_port, kill_group, redis_server_argv, wait_for
from worker.client import Client
from worker.intake.stream import Intake
from worker.runtime.app import Runtime, bind_actors, setup
from worker.store.jobs import NotReplicated


class Replica:
    def __init__(self, dir: Path, primary: RedisServer) -> None:
        self.dir, self.primary, self.port = dir, primary, free_port()
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [*redis_server_argv(self.port, dir=self.dir), "--replicaof", "127.0.0.1", str(self.primary.port)]
        self.popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2) as raw:
            wait_for(lambda: _synced(raw), 15, "the replica to sync with the primary")

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            kill_group(self.popen, grace_s=1.0)
        with self.primary.client() as raw:
            wait_for(lambda: raw.info("replication")["connected_slaves"] == 0, 15, "the primary to see it gone")


def _synced(raw: redis.Redis) -> bool:
    try:
        return raw.info("replication").get("master_link_status") == "up"
    except redis.ConnectionError:  # not listening yet
        return False


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, Replica]]:
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    primary = RedisServer(dir=tmp_path / "primary")
    primary.start()
    replica = Replica(tmp_path / "replica", primary)
    replica.start()
    yield primary, replica
    replica.stop() if replica.popen and replica.popen.poll() is None else None
    primary.stop()


def _settings(primary: RedisServer, sim: SimulatorHandle, **overrides: object) -> Settings:
    values: dict[str, object] = {
        **FAST,
        "redis_url": primary.url,
        "cekura_api_url": sim.url,
        "cekura_api_key": SIM_KEY,
        "cekura_redis_min_replicas": 1,
        "cekura_redis_wait_timeout_ms": 200,
    }
    return load_settings(**{**values, **overrides})


def test_a_job_is_accepted_once_replicated_and_refused_while_no_replica_acknowledges(
    pair: tuple[RedisServer, Replica], sim: SimulatorHandle
) -> None:
    primary, replica = pair
    rt = setup(_settings(primary, sim))
    bind_actors()
    with Client(rt.settings, client=rt.redis, broker=rt.broker) as client:
        job_id = client.submit("agent.auto_fetch", {"agent_id": 1}, job_id="replicated")
        with redis.Redis(host="127.0.0.1", port=replica.port) as on_replica:
            assert on_replica.exists(rt.store.job_key(job_id)), "accepted before the replica held the job"
        replica.stop()
        with pytest.raises(NotReplicated, match="0 of 1 replica"):
            client.submit("agent.auto_fetch", {"agent_id": 2}, job_id="not-replicated")


def test_a_request_entry_waits_in_its_stream_until_a_replica_holds_its_job_and_then_ends_once(
    pair: tuple[RedisServer, Replica], sim: SimulatorHandle
) -> None:
    primary, replica = pair
    rt: Runtime = setup(_settings(primary, sim))
    bind_actors()
    worker = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=100)
    worker.start()
    intake = Intake(rt, claim_idle_ms=500)
    intake.start()
    try:
        replica.stop()
        with primary.client() as raw:
            raw.xadd(
                rt.settings.cekura_requests_stream,
                {"request": '{"kind":"agent.auto_fetch","job_id":"waits","params":{"agent_id":3}}'},
            )
            # recorded on the primary, but not acknowledged: no replica took it
            wait_for(lambda: raw.exists(rt.store.job_key("waits")), 15, "the job to be recorded")
            time.sleep(1.0)  # several intake passes, each refused by WAIT
            assert raw.xlen(rt.settings.cekura_requests_stream) == 1, "the entry was acknowledged unreplicated"
            replica.start()
            wait_for(lambda: raw.xlen(rt.settings.cekura_requests_stream) == 0, 30, "the entry to be acknowledged")
        with Client(rt.settings, client=rt.redis, broker=rt.broker) as client:
            event = client.wait("waits", timeout=30)
        assert event["status"] == "completed"
        with primary.client() as raw:
            assert sum(1 for _, f in raw.xrange(rt.settings.cekura_results_stream) if f[b"job_id"] == b"waits") == 1
    finally:
        intake.stop()
        intake.join(timeout=10)
        worker.stop(timeout=10_000)
