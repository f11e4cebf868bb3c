"""`cekura-worker healthcheck` against real Redis and a real `cekura-worker run`: healthy while this host's worker
processes beat, unhealthy with a one-line reason when Redis is down or the workers are gone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import redis

from config.settings import Settings
from tests.support import free_port, running_workers, service_env, wait_for
from worker.ops.health import check
from worker.runtime.heartbeat import Heartbeat, workers_key

HEARTBEAT_S = 1.0


def _healthcheck(env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "healthcheck"],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_healthcheck_fails_with_a_reason_when_redis_is_down(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = service_env(redis_url=f"redis://:hunter2-pass@127.0.0.1:{port}/0")
    done = _healthcheck(env, tmp_path)
    assert done.returncode == 1, done
    assert done.stdout.startswith(f"redis unreachable at redis://:***@127.0.0.1:{port}/0: "), done.stdout
    assert done.stdout.count("\n") == 1  # one line
    assert "hunter2-pass" not in done.stdout + done.stderr


def test_healthcheck_counts_only_fresh_heartbeats_of_this_host(settings: Settings, redis_client: redis.Redis) -> None:
    host = socket.gethostname()
    now_ms = int(time.time() * 1000)
    redis_client.zadd(workers_key(settings), {"some-other-host:17": now_ms, f"{host}:4242": now_ms - 60_000})

    ok, reason = check(settings)
    assert not ok
    assert reason.startswith(f"no live worker process on host {host} (last heartbeat ")
    seconds = int(reason.split("last heartbeat ")[1].split(" s ago")[0])
    assert 59 <= seconds <= 65

    Heartbeat(redis_client, settings, alive=lambda: True).beat()
    ok, reason = check(settings)
    assert ok, reason
    assert f"1 live worker process(es) on host {host}" in reason

    # This process's beat ages; once its threads are dead it withholds new beats, so the check fails again.
    redis_client.zadd(workers_key(settings), {f"{host}:{os.getpid()}": now_ms - 60_000})
    Heartbeat(redis_client, settings, alive=lambda: False).beat()
    ok, reason = check(settings)
    assert not ok
    assert "last heartbeat" in reason


@pytest.mark.slow
def test_healthcheck_follows_the_worker_processes_of_this_host(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"cekura_heartbeat_interval_s": HEARTBEAT_S})
    env = service_env(settings, cekura_idle_wake_ms=100, cekura_shutdown_timeout_s=5, log_level="WARNING")
    host = socket.gethostname()

    before = _healthcheck(env, tmp_path)
    assert before.returncode == 1
    assert before.stdout.strip() == f"no live worker process on host {host} (no heartbeat recorded)"

    log_path = tmp_path / "worker.log"
    with running_workers(env, log_path) as process:
        wait_for(lambda: check(settings)[0], 30, "the worker's first heartbeat", log_path)
        healthy = _healthcheck(env, tmp_path)
        assert healthy.returncode == 0, healthy
        assert healthy.stdout.startswith(
            f"ok: redis at {settings.redis_url_redacted} answers; 1 live worker process(es)"
        )

        # The container's processes die without a word (OOM kill, SIGKILL): their heartbeat goes stale.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        wait_for(lambda: not check(settings)[0], 10, "the heartbeat to go stale")

    after = _healthcheck(env, tmp_path)
    assert after.returncode == 1
    assert after.stdout.startswith(f"no live worker process on host {host} (last heartbeat ")
