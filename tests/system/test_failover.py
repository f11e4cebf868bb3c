"""Redis failover (issue 20): a primary, a replica and three Sentinels as real `redis-server` processes, two
`cekura-worker run` processes given only the `redis+sentinel://` URL, and the simulator.

What must show, for a SIGKILL of the primary and for a `SENTINEL FAILOVER`: every accepted job ends with exactly
one result event on the current primary; the new primary writes its first result event within 15 s; both worker
processes still serve afterwards. And, without Sentinel, a connection that meets `READONLY` (its server became a
replica) reconnects and retries, succeeding if the server is a primary again within the retry budget and raising
`ReadOnlyError` only after every retry otherwise.

"Accepted" is stricter than "`submit` returned": see `failover_support` (the submitter `WAIT`s for the replica).

Nothing here may reach the machine's Redis on 6379: the Sentinels, primary and replica run on free ports, the
READONLY tests on two private `redis-server`s (never the shared test database, which must not become a replica);
every key goes under a prefix of the test's own (`failover-<random>`); while a test runs, its process and its workers
refuse any connection to port 6379 (`guard6379`), and afterwards no key under its prefix may be there (db 0..15).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import dramatiq
import pytest
import redis

from config.settings import Settings, load_settings
from simulator import SimulatorHandle
from tests.redis_ha import RedisHA
from tests.support import RedisServer, wait_for
from tests.system import failover_support as fs
from tests.system.guard6379.sitecustomize import guard
from worker.client import Client
from worker.runtime.app import bind_actors, setup
from worker.runtime.connection import connect, server_ms, thread_connections
from worker.runtime.reconciler import Reconciler
from worker.store.jobs import JobStore
from worker.store.records import Phase

if TYPE_CHECKING:
    from conftest import System, WorkerRun

pytestmark = pytest.mark.slow

#: Jobs submitted around the failover, one every `SUBMIT_INTERVAL_S`.
JOBS = 150
SUBMIT_INTERVAL_S = 0.02

#: The failover comes once this many jobs were submitted (and some have ended).
FAIL_AFTER = 60

#: Jobs submitted once the failover is over, to see both worker processes take steps on the new primary.
AFTER_JOBS = 24

#: The longest a new primary may take to write its first result event, from the kill (or the failover command).
FIRST_EVENT_BOUND_S = 15.0

#: Log events that show a worker process taking job steps.
STEP_EVENTS = frozenset({"job_started", "job_progress", "job_finished"})

#: Log events that would mean a thread died or a consumer gave up.
DEATH_EVENTS = frozenset({"worker_threads_dead", "worker_process_died", "worker_process_killed"})


#: On the workers' PYTHONPATH: refuses any connection to the machine's Redis (see its docstring).
GUARD_DIR = Path(__file__).with_name("guard6379")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own. While the test runs, this process refuses any connection to the machine's
    Redis on 6379 (as the workers do, through `guard6379`); afterwards no key under the prefix may be there."""
    name = fs.unique_prefix()
    undo = guard([fs.MACHINE_REDIS_PORT])
    try:
        yield name
    finally:
        undo()
    fs.assert_machine_redis_untouched(name)


@dataclass(frozen=True)
class _Endpoint:
    """What `System.worker_env` reads of a server: its URL (here the Sentinels')."""

    url: str


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[RedisHA]:
    cluster = RedisHA(tmp_path / "ha")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def _fleet(system: System, ha: RedisHA, prefix: str) -> tuple[list[WorkerRun], Client, Any]:
    """The simulator, two `cekura-worker run` (one process of four threads each) on the Sentinel URL, and a
    producer's client on it too."""
    sim = system.simulator("--duration", "1")
    env = system.worker_env(cast("RedisServer", _Endpoint(ha.url)), sim, **fs.isolated_env(prefix))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GUARD_DIR), os.environ.get("PYTHONPATH", "")]))
    env["TEST_FORBIDDEN_REDIS_PORTS"] = str(fs.MACHINE_REDIS_PORT)
    assert env["REDIS_URL"].startswith("redis+sentinel://") and ":6379" not in env["REDIS_URL"]
    runs = [system.worker(env, processes=1, threads=4, wait=False) for _ in range(2)]
    for run in runs:
        run.wait_started(1)
    # The producer shares the workers' settings, as a deployment does: a job it records is due by its grace.
    shared = {
        name.lower(): value for name, value in env.items() if name.startswith("CEKURA_") and not value.startswith("{")
    }
    client = Client(load_settings(redis_url=ha.url, **shared))
    assert client.settings.cekura_reconcile_grace_s == float(env["CEKURA_RECONCILE_GRACE_S"])
    return runs, client, sim


@dataclass(frozen=True)
class Disruption:
    """How the primary goes: `fail` does it and returns the old primary's port; `rejoin(ha, old, new)` returns the
    old primary once it is (or is becoming) the new primary's replica."""

    name: str
    fail: Callable[[RedisHA], int]
    rejoin: Callable[[RedisHA, int, int], Any]


def _kill(ha: RedisHA) -> int:
    return int(ha.kill_primary().port)


def _sentinel_failover(ha: RedisHA) -> int:
    port = int(ha.primary().port)
    ha.failover()
    return port


#: A crash: SIGKILL, then the server comes back as the new primary's replica.
KILL = Disruption("kill", _kill, lambda ha, old, new: ha.restart(ha.server(old), replica_of=new))

#: A maintenance failover: the Sentinels demote the old primary themselves (some ten seconds later).
FAILOVER = Disruption("SENTINEL FAILOVER", _sentinel_failover, lambda ha, old, new: ha.server(old))


def _run_failover(system: System, ha: RedisHA, prefix: str, disruption: Disruption) -> dict[str, float]:
    """Submit `JOBS` jobs, disrupt the primary midway, and check what must show; returns the timings measured."""
    runs, client, _ = _fleet(system, ha, prefix)
    try:
        pids = [run.worker_pids() for run in runs]
        assert all(len(p) == 1 for p in pids), pids
        members = {fs.member_of(p[0]) for p in pids}
        submitter = fs.Submitter(
            client, system.job_mix(JOBS), prefix=prefix, interval_s=SUBMIT_INTERVAL_S, deadline_s=60
        )
        submitter.start()
        with ha.primary().client() as raw:
            _wait_or_explain(
                lambda: submitter.count >= FAIL_AFTER and len(fs.results(raw, prefix)) >= 5,
                runs,
                f"{FAIL_AFTER} submissions and a few results before the failover",
            )
            fail_ms = server_ms(raw)  # the old primary's clock (the same host's clock as the new one's)
        old_port = disruption.fail(ha)
        failed_at = time.monotonic()
        new_port = ha.wait_new_primary(old_port, timeout=20)
        promoted_s = time.monotonic() - failed_at
        new = ha.server(new_port)
        with new.client() as raw:
            # Any event made after this instant was written by the new primary: a replica's entries come from its
            # primary, and this server answered as a primary before it.
            promoted_ms = server_ms(raw)
        with new.client() as raw:
            first_ms = _wait_or_explain(
                lambda: fs.first_event_after(raw, prefix, promoted_ms), runs, "a result event by the new primary"
            )
        first_event_s = (first_ms - fail_ms) / 1000
        ha.wait_linked(disruption.rejoin(ha, old_port, new_port), timeout=30)
        relinked_s = time.monotonic() - failed_at

        submitter.join(timeout=60)
        assert not submitter.is_alive(), "the submitter is stuck"
        assert submitter.failure is None, repr(submitter.failure)
        done = submitter.done
        assert len(done.accepted) >= JOBS // 2, f"only {len(done.accepted)} of {JOBS} jobs were accepted: {done}"

        # Both processes still serve: from here on the old primary is a replica, so every step lands on the new
        # one. A last batch gives each process work to show it.
        marks = [len(run.lines()) for run in runs]
        after = fs.Submitter(
            client,
            system.job_mix(1) * AFTER_JOBS,
            prefix=prefix,
            id_prefix=f"{prefix}-after",
            interval_s=0.01,
            deadline_s=60,
        )
        after.run()
        assert after.failure is None, repr(after.failure)
        assert len(after.done.accepted) == AFTER_JOBS, after.done
        done.merge(after.done)
        since = list(zip(runs, marks, strict=True))
        _wait_or_explain(
            lambda: all(fs.log_events_after(run.lines(), mark, STEP_EVENTS) for run, mark in since),
            runs,
            "each worker process to take job steps after the failover",
            timeout=20,
        )

        primary = ha.primary()
        assert primary.port == new_port
        tails = "\n---\n".join(run.tail(40) for run in runs)
        with primary.client() as raw:
            fs.wait_accepted_finished(raw, prefix, done, timeout=45, tail=tails)
            time.sleep(2.5)  # past the reconcile grace: a late duplicate would show up now
            counts = fs.count_events(raw, prefix, done)
            fs.assert_nothing_left_behind(raw, prefix)
            beating = fs.live_members(raw, prefix, within_ms=3000)
            finished = {fs.answered(event): event for _, event in fs.results(raw, prefix)}
        wrong = {
            job_id: (spec.expect, finished[job_id]["status"], finished[job_id]["error"][:80])
            for job_id, spec in done.accepted.items()
            if not spec.ended_as_expected(finished[job_id])
        }
        assert not wrong, f"jobs with the wrong outcome (expected, got, error): {wrong}"

        # Alive, never restarted, no thread dead, beating on the new primary.
        assert members <= beating, f"heartbeats on the new primary: {sorted(beating)}, expected {sorted(members)}"
        for run, pid in zip(runs, pids, strict=True):
            assert run.popen.poll() is None, run.tail()
            assert run.worker_pids() == pid, "a worker process died and was restarted:\n" + run.tail()
            deaths = fs.log_events_after(run.lines(), 0, DEATH_EVENTS)
            assert not deaths, f"pid {pid}: {deaths[:3]}"
        system.assert_log_shape([line for run in runs for line in run.lines()])
    finally:
        client.close()

    timings = {
        "promoted_s": promoted_s,
        "first_event_s": first_event_s,
        "replica_back_s": relinked_s,
        "accepted": len(done.accepted),
        "unconfirmed": len(done.unconfirmed),
        "events": sum(counts.values()),
        "slowest_submit_s": done.slowest_s,
    }
    loud = ("warning", "error", "critical")
    warnings = {
        pid[0]: dict(Counter(r["event"][:40] for r in run.events() if r.get("level") in loud))
        for run, pid in zip(runs, pids, strict=True)
    }
    print(f"\n{disruption.name}: {timings}, submit errors {dict(done.errors)}, worker warnings {warnings}")
    assert first_event_s <= FIRST_EVENT_BOUND_S, (
        f"the new primary's first result event came {first_event_s:.1f}s after the {disruption.name}\n{tails}"
    )
    return timings


def _wait_or_explain(probe: Callable[[], Any], runs: list[WorkerRun], what: str, timeout: float = 30) -> Any:
    """`wait_for`, failing with what the workers logged that explains a stall: their warnings and errors."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            notes = [
                f"pid {record.get('pid')}: {record.get('event')} {record.get('error', '')}"[:300]
                for run in runs
                for record in run.events()
                if record.get("level") in ("warning", "error", "critical") and record.get("event") != "job_rescheduled"
            ]
            steps = sum(run.count("job_started") for run in runs)
            pytest.fail(
                f"timed out after {timeout:g}s waiting for {what}; {steps} job_started in the worker logs; "
                f"their warnings and errors ({len(notes)}):\n" + "\n".join(list(dict.fromkeys(notes))[:15])
            )
        time.sleep(0.05)
    return value


def _port_of(reply: Any) -> int:
    """The port in a `CONFIG GET port` reply."""
    if isinstance(reply, dict):
        return int(reply.get(b"port", reply.get("port")))
    return int(reply[1])


def _ports_seen(settings: Settings) -> dict[str, int | str]:
    """The port each way the worker talks to Redis lands on (or the error it met), asked from a fresh thread (its
    own per-thread connection): the pool, a pipeline, and the per-thread connections the hot-path scripts use."""
    client = connect(settings)
    out: dict[str, int | str] = {}

    def pipeline() -> Any:
        pipe = client.pipeline(transaction=False)
        pipe.config_get("port")
        return pipe.execute()[0]

    ways: dict[str, Callable[[], Any]] = {
        "pool": lambda: client.config_get("port"),
        "pipeline": pipeline,
        "thread_connection": lambda: thread_connections(client).execute("CONFIG", "GET", "port"),
    }

    def ask() -> None:
        for name, way in ways.items():
            try:
                out[name] = _port_of(way())
            except Exception as exc:  # reported by the test, not lost in the thread
                out[name] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout=60)
    client.close()
    return out


def test_every_connection_of_a_sentinel_client_reaches_the_primary(ha: RedisHA, prefix: str) -> None:
    """The pool's connections and the per-thread ones (behind fetch, claim, advance and finish) all ask the
    Sentinels where the primary is, at first and after it moved; none falls back to redis-py's default address
    (localhost:6379, refused here by the guard)."""
    settings = load_settings(redis_url=ha.url, **fs.isolated_settings(prefix))
    client = connect(settings)
    per_thread = thread_connections(client)
    primary = ha.primary().port
    errors: dict[str, BaseException] = {}
    try:
        seen = _ports_seen(settings)
        assert seen == dict.fromkeys(seen, primary), f"primary {primary}, connections on {seen}"

        # A per-thread connection made before the primary died reconnects to the new one.
        before = per_thread.execute("CONFIG", "GET", "port")
        assert _port_of(before) == primary
        ha.kill_primary()
        new = ha.wait_new_primary(primary)
        try:
            after = per_thread.execute("CONFIG", "GET", "port")
            assert _port_of(after) == new
        except redis.RedisError as exc:
            errors["thread_connection after the kill"] = exc
        assert not errors, errors
    finally:
        client.close()


# `ha` before `system`: the workers stop before Redis does (fixtures are torn down in reverse order).
def test_sigkill_of_the_primary_loses_no_accepted_job(ha: RedisHA, system: System, prefix: str) -> None:
    _run_failover(system, ha, prefix, KILL)


def test_sentinel_failover_loses_no_accepted_job(ha: RedisHA, system: System, prefix: str) -> None:
    _run_failover(system, ha, prefix, FAILOVER)


# -- READONLY without Sentinel --------------------------------------------------------------------------------


#: The retry budget of a command (see `worker.runtime.connection`): 5 retries after the first try, sleeping
#: 0.1, 0.2, 0.4, 0.8 and 1.6 s between them.
TRIES = 6
BACKOFF_S = 3.1


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """Two private servers, the second a synced replica of the first (so a swap keeps the data)."""
    servers = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            server = RedisServer(dir=tmp_path / name)
            servers.append(server)
            server.start()
            with server.client() as c:
                c.config_set("repl-diskless-sync-delay", 0)  # sync a new replica at once, not after 5 s
        a, b = servers
        with b.client() as c:
            c.replicaof("127.0.0.1", a.port)
        wait_for(lambda: _link_up(b), 15, "b to sync with a")
        yield a, b
    finally:
        for server in servers:
            server.stop()


def _role(server: RedisServer) -> str:
    with server.client() as c:
        return str(c.info("replication")["role"])


def _link_up(server: RedisServer) -> bool:
    with server.client() as c:
        return c.info("replication").get("master_link_status") == "up"


def _demote(a: RedisServer, b: RedisServer) -> None:
    """Make `a` a replica of `b` (which was `a`'s synced replica, so nothing is lost): what a managed failover does
    to the server a plain `redis://` URL names."""
    with a.client() as ca:
        ca.execute_command("FAILOVER", "TO", "127.0.0.1", b.port, "TIMEOUT", 5000)
    wait_for(lambda: _role(a) == "slave" and _link_up(a), 15, "a to become b's replica")


def _promote_back(a: RedisServer, b: RedisServer) -> None:
    """`a` a primary again (REPLICAOF NO ONE), `b` its replica again."""
    with a.client() as ca:
        ca.replicaof("NO", "ONE")
    with b.client() as cb:
        cb.replicaof("127.0.0.1", a.port)


def _readonly_count(server: RedisServer) -> int:
    with server.client() as c:
        stats = c.info("errorstats")
    return int(stats.get("errorstat_READONLY", {}).get("count", 0))


def _write_paths(settings: Settings, job_id: str) -> tuple[redis.Redis, dict[str, Callable[[], Any]]]:
    """One write through each way the worker talks to Redis (each a write every time it is called: a READONLY
    reply on every try while the server is a replica); `job_id` must be a queued job (its start is claimed)."""
    client = connect(settings)
    per_thread = thread_connections(client)
    pooled = JobStore(client, settings)
    threaded = JobStore(client, settings, per_thread=True)

    def pipeline() -> Any:  # as the heartbeat writes
        pipe = client.pipeline(transaction=False)
        pipe.zadd(settings.key("workers"), {"test": 1})
        return pipe.execute()

    return client, {
        "pool": lambda: client.set(settings.key("plain"), "x"),
        "thread_connection": lambda: per_thread.execute("SET", settings.key("threaded"), "x"),
        "lua_pool": lambda: pooled.submit(f"{job_id}-new", "agent.auto_fetch", {"agent_id": 5}, {}, 60, {}),
        "lua_thread_connection": lambda: threaded.claim(job_id, Phase.START, 0),
        "pipeline": pipeline,
    }


def _run_all(
    client: redis.Redis, paths: dict[str, Callable[[], Any]], meanwhile: Callable[[], None]
) -> dict[str, tuple[float, Any]]:
    """Run every path at once, each in a thread of its own: first each thread connects (its `ThreadConnections`
    connection and a pool connection) while the server is a primary, then `meanwhile()` runs (it demotes the
    server), then every path makes its write. Returns (seconds taken, result or the exception raised) per path."""
    ready = threading.Barrier(len(paths) + 1)
    go = threading.Event()
    out: dict[str, tuple[float, Any]] = {}
    per_thread = thread_connections(client)

    def run(name: str, path: Callable[[], Any]) -> None:
        per_thread.execute("PING")
        client.ping()
        ready.wait()
        go.wait()
        started = time.monotonic()
        try:
            value: Any = path()
        except Exception as exc:
            value = exc
        out[name] = (time.monotonic() - started, value)

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in paths.items()]
    for thread in threads:
        thread.start()
    ready.wait(timeout=10)
    meanwhile()
    go.set()
    for thread in threads:
        thread.join(timeout=30)
    assert set(out) == set(paths), f"paths still running: {set(paths) - set(out)}"
    return out


def _plain_settings(server: RedisServer, prefix: str, **overrides: Any) -> Settings:
    url = server.url
    assert url.startswith("redis://127.0.0.1:") and ":6379/" not in url
    return load_settings(redis_url=url, **fs.isolated_settings(prefix), **overrides)


def test_readonly_is_retried_until_the_server_is_a_primary_again(
    pair: tuple[RedisServer, RedisServer], prefix: str
) -> None:
    a, b = pair
    settings = _plain_settings(a, prefix)
    client, paths = _write_paths(settings, f"{prefix}-job")
    store = JobStore(client, settings)
    assert store.submit(f"{prefix}-job", "agent.auto_fetch", {"agent_id": 5}, {}, 60, {}) == (True, "queued")
    with a.client() as c:
        c.execute_command("WAIT", 1, 1000)
    readonly_before = _readonly_count(a)
    back_after_s = 0.5
    timer = threading.Timer(back_after_s, _promote_back, args=(a, b))

    def demote_then_schedule_the_way_back() -> None:
        _demote(a, b)
        timer.start()

    out = _run_all(client, paths, demote_then_schedule_the_way_back)
    timer.join()
    try:
        errors = {name: value for name, (_, value) in out.items() if isinstance(value, BaseException)}
        assert not errors, f"writes that failed although the server was a primary again after {back_after_s}s: {errors}"
        # Each path met READONLY at least once and waited for the way back.
        assert _readonly_count(a) - readonly_before >= len(paths)
        assert all(took >= back_after_s * 0.5 for took, _ in out.values()), out
        assert all(took < BACKOFF_S for took, _ in out.values()), out
        with a.client() as c:
            assert c.get(settings.key("plain")) == b"x" and c.get(settings.key("threaded")) == b"x"
            assert c.hget(settings.key("job", f"{prefix}-job-new"), "state") == b"queued"
            assert c.hget(settings.key("job", f"{prefix}-job"), "state") == b"starting", c.hgetall(
                settings.key("job", f"{prefix}-job")
            )
        print(f"\nREADONLY for {back_after_s}s: { ({name: round(took, 2) for name, (took, _) in out.items()}) }")
    finally:
        client.close()


def test_readonly_surfaces_only_after_every_retry(pair: tuple[RedisServer, RedisServer], prefix: str) -> None:
    a, b = pair
    settings = _plain_settings(a, prefix)
    client, paths = _write_paths(settings, f"{prefix}-job")
    JobStore(client, settings).submit(f"{prefix}-job", "agent.auto_fetch", {"agent_id": 5}, {}, 60, {})
    with a.client() as c:
        c.execute_command("WAIT", 1, 1000)
    readonly_before = _readonly_count(a)
    try:
        out = _run_all(client, paths, lambda: _demote(a, b))
        not_readonly = {name: value for name, (_, value) in out.items() if not isinstance(value, redis.ReadOnlyError)}
        assert not not_readonly, f"paths that did not end with ReadOnlyError: {not_readonly}"
        # Every path tried exactly TRIES times, sleeping the whole backoff between tries.
        assert _readonly_count(a) - readonly_before == TRIES * len(paths)
        assert all(took >= BACKOFF_S * 0.95 for took, _ in out.values()), out
        print(f"\nREADONLY throughout: { ({name: round(took, 2) for name, (took, _) in out.items()}) }")
    finally:
        _promote_back(a, b)
        client.close()


@pytest.mark.parametrize("window_s", [1.0, 5.0], ids=["within-the-retry-budget", "beyond-the-retry-budget"])
def test_in_process_worker_rides_out_a_readonly_window(
    pair: tuple[RedisServer, RedisServer], sim: SimulatorHandle, window_s: float, prefix: str
) -> None:
    """A worker on a plain URL whose server is a replica for `window_s` (a managed failover and back): every job
    ends once, with its expected outcome, and the worker's threads all still run."""
    a, b = pair
    sim.reset()
    sim.clear_faults()
    sim.configure(duration_s=1.0, polls_to_complete=None, rate_limit_rps=0)
    settings = _plain_settings(
        a,
        prefix,
        cekura_api_url=sim.url,
        cekura_api_key="sim-key",
        cekura_poll_initial_s=0.1,
        cekura_poll_max_s=0.3,
        cekura_retry_initial_s=0.05,
        cekura_retry_max_s=0.5,
        cekura_http_timeout_s=2.0,
        cekura_lease_s=5.0,
        cekura_reconcile_grace_s=2.0,
        cekura_reconcile_interval_s=0.5,
        cekura_learn_polling=False,
        log_level="INFO",
        log_format="json",
    )
    rt = setup(settings)
    bind_actors()
    worker = dramatiq.Worker(rt.broker, worker_threads=4, worker_timeout=100)
    reconciler = Reconciler(rt)
    client = Client(settings, client=rt.redis, broker=rt.broker)
    jobs = [f"{prefix}-{i:03d}" for i in range(40)]
    worker.start()
    reconciler.start()
    try:
        for job_id in jobs[:20]:
            client.submit("agent.auto_fetch", {"agent_id": 5}, job_id=job_id, deadline_s=60)
        with a.client() as raw:
            wait_for(lambda: raw.hget(settings.key("job", jobs[0]), "state") == b"polling", 15, "jobs to poll")
            _demote(a, b)
            time.sleep(window_s)
            _promote_back(a, b)
            for job_id in jobs[20:]:
                client.submit("agent.auto_fetch", {"agent_id": 5}, job_id=job_id, deadline_s=60)
            done = fs.Submissions(accepted=dict.fromkeys(jobs, None))
            fs.wait_accepted_finished(raw, prefix, done, timeout=30)
            time.sleep(2.5)
            fs.count_events(raw, prefix, done)
            statuses = {event["status"] for _, event in fs.results(raw, prefix)}
            assert statuses == {"completed"}, [event for _, event in fs.results(raw, prefix)][:5]
            fs.assert_nothing_left_behind(raw, prefix, settings.cekura_queue)
        assert rt.broker.threads.alive(), "a Dramatiq worker or consumer thread died"
        assert reconciler.is_alive()
    finally:
        reconciler.stop()
        worker.stop(timeout=10_000)
        reconciler.join(timeout=5)
