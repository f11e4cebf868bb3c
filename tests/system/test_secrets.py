"""Secrets never leave the service: after a run, nothing it wrote (logs, Redis keys and values, result events, CLI
output) contains the Cekura API key, a provider `api_key` given with a job, or the Redis password."""

from __future__ import annotations

import importlib.util
import json
import secrets
from typing import TYPE_CHECKING, Any

import pytest
import redis

if TYPE_CHECKING:
    from conftest import System

pytestmark = pytest.mark.slow


def test_no_secret_reaches_logs_redis_events_or_cli_output(system: System) -> None:
    api_key = f"cekura-api-key-{secrets.token_hex(8)}"
    wrong_key = f"wrong-api-key-{secrets.token_hex(8)}"
    provider_key = f"provider-key-{secrets.token_hex(8)}"
    password = f"redis-pw-{secrets.token_hex(8)}"
    wrong_password = f"wrong-redis-pw-{secrets.token_hex(8)}"
    hidden = {
        "wrong Redis password": wrong_password,
        "CEKURA_API_KEY": api_key,
        "wrong CEKURA_API_KEY": wrong_key,
        "provider api_key": provider_key,
        "Redis password": password,
    }

    server = system.redis(password=password)
    # A second deployment whose worker has a key Cekura refuses: its job fails with a 401 (that key is a secret too).
    refused_server = system.redis(password=password)
    sim = system.simulator("--duration", "0.5", api_key=api_key)
    env = system.worker_env(server, sim, LOG_LEVEL="DEBUG")
    refused_env = {**env, "REDIS_URL": refused_server.url, "CEKURA_API_KEY": wrong_key}
    worker = system.worker(env, processes=2, threads=4, wait=False)
    refused = system.worker(refused_env, processes=1, threads=2, wait=False)
    worker.wait_started(2)
    refused.wait_started(1)
    client = system.client(server)
    toggle = "agent.toggle_mock_tools"
    jobs: dict[str, str] = {}

    refused_client = system.client(refused_server)
    refused_client.submit(toggle, {"agent_id": 6, "enabled": True, "api_key": provider_key}, job_id="refused")
    with_key = {"enabled": True, "api_key": provider_key}
    jobs[client.submit(toggle, {"agent_id": 6, **with_key}, job_id="completes")] = "completed"
    jobs[client.submit(toggle, {"agent_id": 950, **with_key}, job_id="cekura-fails")] = "failed"
    jobs[client.submit(toggle, {"agent_id": 403, **with_key}, job_id="forbidden")] = "failed"
    jobs[client.submit(toggle, {"agent_id": 777, **with_key}, job_id="times-out", deadline_s=2)] = "timed_out"
    jobs[client.submit(toggle, {"agent_id": 777, **with_key}, job_id="cancelled")] = "cancelled"
    with server.client() as raw:
        system.submit_via_stream(raw, {"kind": toggle, "params": {"agent_id": 8, **with_key}, "job_id": "streamed"})
        system.submit_via_stream(raw, {"kind": toggle, "params": {"agent_id": "8", **with_key}, "job_id": "bad-id"})
        system.submit_via_stream(
            raw, {"kind": "agent.auto_fetch", "params": {"agent_id": 5, "api_key": provider_key}, "job_id": "stray-key"}
        )
    jobs["streamed"] = "completed"
    cli_submit = system.cli(
        {"REDIS_URL": server.url},
        "submit", toggle, "-p", "agent_id=9", "-p", "enabled=false", "-p", f"api_key={provider_key}",
        "--job-id", "from-cli", "--wait", "--timeout", "30",
    )  # fmt: skip
    assert cli_submit.returncode == 0, cli_submit.stderr
    jobs["from-cli"] = "completed"
    system.wait_for(
        lambda: (client.status("cancelled") or {}).get("state") == "polling",
        timeout=30,
        what="the job to be cancelled to be polling",
    )
    assert client.cancel("cancelled").result == "cancelled"

    with server.client() as raw:
        finished = system.wait_all_finished(raw, set(jobs) | {"bad-id", "stray-key"}, timeout=30, worker=worker)
    outcomes = {job_id: finished[job_id]["status"] for job_id in jobs}
    assert outcomes == jobs
    with refused_server.client() as raw:
        refused_event = system.wait_all_finished(raw, {"refused"}, timeout=30, worker=refused)["refused"]
    assert refused_event["status"] == "failed"
    assert "refused" in refused_event["error"]
    assert finished["bad-id"]["status"] == finished["stray-key"]["status"] == "rejected"

    # Everything the service wrote.
    writings: dict[str, str] = {}
    writings["worker logs (refused key)"] = refused.log_path.read_text()
    writings["worker logs"] = worker.log_path.read_text()
    with server.client() as raw:
        writings["redis"] = _dump_redis(raw)
    with refused_server.client() as raw:
        writings["redis (refused key)"] = _dump_redis(raw)
    writings["cli submit"] = cli_submit.stdout + cli_submit.stderr
    # The CLI as an operator would use it (each command starts an interpreter, so they run side by side).
    good, bad = {"REDIS_URL": server.url}, {"REDIS_URL": server.url.replace(password, wrong_password)}
    commands: list[tuple[dict[str, str], list[str]]] = [
        (good, ["status", "completes"]),
        (good, ["status", "forbidden"]),
        (good, ["results"]),
        (good, ["healthcheck"]),
        (bad, ["healthcheck"]),
    ]
    if importlib.util.find_spec("worker.ops.summary") is not None:  # the status summary (worker/ops/summary.py)
        commands += [(good, ["status", "--format", "table"]), (good, ["status", "--format", "json"])]
    for (env_used, args), done in zip(commands, system.cli_many(commands), strict=True):
        wrong_password_used = env_used is bad
        writings["cli " + " ".join(args) + (" (wrong Redis password)" if wrong_password_used else "")] = (
            done.stdout + done.stderr
        )
        assert (done.returncode != 0) == wrong_password_used, done.stdout + done.stderr
        if args[0] == "status" and args[1] in jobs:
            assert json.loads(done.stdout)["status"] == jobs[args[1]]
        if args == ["results"]:
            assert len(done.stdout.splitlines()) == len(jobs) + 2

    leaks = [
        f"{name} in {where}" for where, text in writings.items() for name, value in hidden.items() if value in text
    ]
    assert not leaks, f"secrets leaked: {leaks}"
    assert provider_key not in writings["redis"] + writings["redis (refused key)"]  # no secret key outlives its job
    assert worker.count("job_finished") >= len(jobs) - 2
    system.assert_log_shape(refused.lines() + worker.lines())


def test_provider_key_lives_only_in_its_own_key_and_leaves_redis_with_the_job(system: System) -> None:
    # It stays until the job ends (not only until the start call), so Cekura echoing it in a poll can be masked.
    server = system.redis()
    sim = system.simulator("--duration", "0.5")
    client = system.client(server)
    provider_key = f"provider-key-{secrets.token_hex(8)}"
    # Agent 777 never finishes, so the job stays in its polling phase.
    params = {"agent_id": 777, "enabled": True, "api_key": provider_key}
    client.submit("agent.toggle_mock_tools", params, job_id="polling", deadline_s=60)
    with server.client() as raw:
        assert raw.exists("cekura:secret:polling") == 1, "the key is kept apart until the start call needs it"
        assert provider_key not in str(raw.hgetall("cekura:job:polling"))

    system.worker(system.worker_env(server, sim), processes=1, threads=2)
    system.wait_for(
        lambda: (client.status("polling") or {}).get("state") == "polling", timeout=30, what="the start call"
    )
    with server.client() as raw:
        assert raw.exists("cekura:secret:polling") == 1  # kept until the job ends, to mask Cekura echoing it
        raw.rename("cekura:secret:polling", "aside")
        assert provider_key not in _dump_redis(raw).replace(str(raw.get("aside")), "")  # nowhere else
        raw.rename("aside", "cekura:secret:polling")
        client.cancel("polling")
        assert raw.exists("cekura:secret:polling") == 0
        assert provider_key not in _dump_redis(raw)
    assert sim.stats()["started_by_kind"]["toggle_mock_tools"] == 1


def _dump_redis(client: redis.Redis) -> str:
    """Every key and value in the server, whatever its type, as text."""
    out: list[str] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
            with_groups = client.xinfo_groups(key)
            value = [value, with_groups, [client.xinfo_consumers(key, g["name"]) for g in with_groups]]
        else:
            value = f"<{kind}>"
        out.append(f"{key!r} {kind} {value!r}")
    return "\n".join(out)
