"""Probes that survive Redis: liveness keeps passing through a Redis outage longer than a probe's failure window,
the worker resumes without a restart, and readiness fails while Redis is away and recovers when it is back."""

from __future__ import annotations

import time

from tests.system.conftest import System

#: Longer than a Kubernetes liveness probe's failure window with the manifests' settings scaled to the test's
#: 1 s heartbeat (3 failures x 2 s): a liveness probe built on Redis would have restarted the container.
OUTAGE_S = 8.0


def test_liveness_passes_through_a_redis_outage_and_readiness_recovers(system: System) -> None:
    server = system.redis(persistent=True)
    sim = system.simulator("--duration", "1")
    env = system.worker_env(server, sim, CEKURA_HEALTH_DIR=str(system.tmp_path / "health"))
    worker = system.worker(env, processes=2, threads=2)
    client = system.client(server)

    def probe(mode: str) -> tuple[int, str]:
        result = system.cli(env, "healthcheck", f"--{mode}", timeout=20)
        return result.returncode, result.stdout.strip()

    system.wait_for(lambda: probe("readiness")[0] == 0, timeout=60, what="readiness before the outage")
    assert probe("liveness")[0] == 0
    pids = worker.worker_pids()
    before = client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="before-outage", deadline_s=120)
    assert client.wait(before, timeout=60)["status"] == "completed"

    server.kill()
    outage_ends = time.monotonic() + OUTAGE_S
    liveness: list[tuple[int, str]] = []
    readiness: list[tuple[int, str]] = []
    while time.monotonic() < outage_ends:
        liveness.append(probe("liveness"))
        readiness.append(probe("readiness"))
    assert all(code == 0 for code, _ in liveness), liveness
    assert readiness and all(code == 1 for code, _ in readiness), readiness
    assert "redis unreachable" in readiness[-1][1]

    server.start()
    system.wait_for(lambda: probe("readiness")[0] == 0, timeout=30, what="readiness after Redis is back")
    assert probe("liveness")[0] == 0
    assert worker.worker_pids() == pids, "a worker process was restarted"
    after = system.client(server).submit("agent.auto_fetch", {"agent_id": 5}, job_id="after-outage", deadline_s=120)
    assert system.client(server).wait(after, timeout=30)["status"] == "completed"


def test_liveness_fails_when_the_worker_processes_are_gone(system: System) -> None:
    server = system.redis()
    sim = system.simulator()
    env = system.worker_env(server, sim, CEKURA_HEALTH_DIR=str(system.tmp_path / "health"))
    worker = system.worker(env, processes=1, threads=2)
    system.wait_for(lambda: system.cli(env, "healthcheck", "--liveness").returncode == 0, timeout=60, what="liveness")
    worker.stop()
    result = system.cli(env, "healthcheck", "--liveness")
    assert result.returncode == 1
    assert "no worker process here has beaten" in result.stdout
