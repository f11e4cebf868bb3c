"""Attacks on the Redis-failover guarantees (README "Redis Sentinel and failover", CEKURA_REDIS_MIN_REPLICAS,
"Memory that can't silently evict jobs"). A test that fails demonstrates a break; its docstring says which promise.

Everything runs on private `redis-server`s and Sentinels on free ports; while a test runs this process refuses any
redis-py connection to the machine's Redis on 6379 (`guard6379`), and so do the workers it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis

from config.settings import Settings, load_settings
from simulator import SimulatorHandle
from tests.conftest import FAST, SIM_KEY
from tests.redis_ha import SERVICE, RedisHA
from tests.support import RedisServer, wait_for
from tests.system import attack_failover_support as af
from tests.system import failover_support as fs
from tests.system.guard6379.sitecustomize import guard
from worker.client import Client
from worker.intake.stream import Intake
from worker.runtime.app import Runtime, bind_actors, setup
from worker.runtime.connection import connect, thread_connections
from worker.runtime.heartbeat import Heartbeat
from worker.runtime.reconciler import Reconciler
from worker.store.jobs import NotReplicated

pytestmark = pytest.mark.slow

GUARD_DIR = Path(__file__).with_name("guard6379")


@pytest.fixture(autouse=True)
def no_machine_redis() -> Iterator[None]:
    """Nothing in this process may reach 127.0.0.1:6379 while an attack runs."""
    undo = guard([fs.MACHINE_REDIS_PORT])
    try:
        yield
    finally:
        undo()


@pytest.fixture
def prefix() -> Iterator[str]:
    name = fs.unique_prefix()
    yield name
    fs.assert_machine_redis_untouched(name)


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[RedisHA]:
    cluster = RedisHA(tmp_path / "ha")
    try:
        yield cluster.start()
    finally:
        for process in cluster.sentinels:  # a test may leave a Sentinel stopped: let it die
            if process.alive():
                with_signal(process.popen.pid, signal.SIGCONT)
        cluster.stop()


def with_signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """Private redis-servers made on demand: `servers.append(...)` is done by `new_server`."""
    made: list[RedisServer] = []
    yield made
    for server in made:
        server.stop()


def new_server(made: list[RedisServer], tmp_path: Path) -> RedisServer:
    data = tmp_path / f"srv-{len(made)}"
    data.mkdir()
    server = RedisServer(dir=data)
    made.append(server)
    server.start()
    return server


def fast_settings(redis_url: str, sim: SimulatorHandle, **overrides: Any) -> Settings:
    return load_settings(
        **{**FAST, "redis_url": redis_url, "cekura_api_url": sim.url, "cekura_api_key": SIM_KEY, **overrides}
    )


def fresh_sim(sim: SimulatorHandle, **config: Any) -> None:
    sim.reset()
    sim.clear_faults()
    sim.configure(**{"duration_s": 0.3, "polls_to_complete": None, "rate_limit_rps": 0, **config})


def evaluator_starts(sim: SimulatorHandle, job_id: str) -> int:
    """How many evaluator-run starts the simulator accepted for `job_id` (its key is the run's name plus its tag)."""
    keys = sim.stats()["started_by_key"].get("evaluator_run", {})
    return sum(int(n) for key, n in keys.items() if job_id in key)


# -- 1. The heartbeat's follow_primary after a SENTINEL FAILOVER ---------------------------------------------------


@pytest.mark.parametrize("another_thread_first", [True, False], ids=["another-thread-first", "heartbeat-first"])
def test_heartbeat_moves_every_thread_connection_after_failover_even_when_another_thread_learned_it_first(
    ha: RedisHA, prefix: str, another_thread_first: bool
) -> None:
    """README: "Each heartbeat also asks the Sentinels where the primary is and moves the process's connections when
    it changed, since after `SENTINEL FAILOVER` the old primary keeps taking writes for about 10 s".

    Attack: after the failover, one worker thread opens its first connection (an idle Dramatiq thread, a connection
    that dropped) before the heartbeat runs. That connection asks the Sentinels and, in redis-py, updates the
    pool's `master_address`; `follow_primary` then compares that already-updated address with the Sentinels'
    answer, sees no change, and leaves every other thread's connection on the old primary, whose writes are lost
    when it steps down."""
    settings = load_settings(redis_url=ha.url, **fs.isolated_settings(prefix))
    client = connect(settings)
    per_thread = thread_connections(client)
    thread_a, thread_b = af.PinnedThread("worker-a"), af.PinnedThread("worker-b")
    heartbeat = Heartbeat(client, settings, alive=lambda: True)
    where = ("CONFIG", "GET", "port")
    try:
        old = ha.primary().port
        assert af.port_of(thread_a.call(lambda: per_thread.execute(*where))) == old
        heartbeat.beat()  # the pool knows the primary, as in a running worker
        ha.failover()
        new = ha.wait_new_primary(old)
        wait_for(lambda: af.discovered(ha) == new, 20, "redis-py's discovery to name the new primary")
        if another_thread_first:  # (the control, heartbeat-first, shows that follow_primary works by itself)
            assert af.port_of(thread_b.call(lambda: per_thread.execute(*where))) == new  # b's first command
        heartbeat.beat()  # what the heartbeat thread does every interval
        seen = af.port_of(thread_a.call(lambda: per_thread.execute(*where)))
        key = settings.key("written-after-heartbeat")
        thread_a.call(lambda: per_thread.execute("SET", key, "1"))
        # The old primary steps down some 10 s after the failover and syncs from the new one.
        ha.wait_linked(ha.server(old), timeout=40)
        with ha.server(new).client() as raw:
            kept = bool(raw.exists(key))
        assert seen == new and kept, (
            f"after the heartbeat, worker thread a still talked to the old primary {seen} (new: {new}); "
            f"its write there {'survived' if kept else 'was lost when the old primary stepped down'}"
        )
    finally:
        thread_a.stop()
        thread_b.stop()
        client.close()


# -- 2. CEKURA_REDIS_MIN_REPLICAS=1: an answer whose WAIT fails ---------------------------------------------------


def test_an_answer_handled_again_after_not_replicated_is_not_rejected(
    servers: list[RedisServer], tmp_path: Path, sim: SimulatorHandle
) -> None:
    """README: with CEKURA_REDIS_MIN_REPLICAS=1, when `WAIT` answers too few "the write is not relied on
    (`NotReplicated`: the client raises, the entry is handled again ...)".

    Attack: an `answer` request entry whose WAIT times out (the replica is away for a moment). `answer.lua` already
    recorded the answer and wrote the poll that delivers it; the entry is handled again once the replica is back,
    `answer.lua` now says `answered`, and the intake publishes a `rejected` event for an answer that was taken
    and goes to Cekura."""
    fresh_sim(sim)
    primary, replica = new_server(servers, tmp_path), new_server(servers, tmp_path)
    af.make_replica(replica, primary)
    # WAIT gets 1 s: on a busy machine a replica that is there may take over 200 ms to acknowledge, which is not the
    # moment this test is about (the replica away, then back).
    settings = fast_settings(primary.url, sim, cekura_redis_min_replicas=1, cekura_redis_wait_timeout_ms=1000)
    rt: Runtime = setup(settings)
    bind_actors()
    job_id = "asks-a-question"
    rt.store.submit(job_id, "scenario.generate", {"num_scenarios": 2}, {}, 600, {})
    with primary.client() as raw:
        raw.hset(rt.store.job_key(job_id), mapping={"state": "waiting", "question": "which agent?"})
        raw.execute_command("WAIT", 1, 1000)
        intake = Intake(rt, name="attack", claim_idle_ms=100)
        intake.ensure_group()
        request = {"action": "answer", "job_id": job_id, "answer": "agent 7"}
        raw.xadd(settings.cekura_requests_stream, {"request": json.dumps(request)})
        raw.execute_command("WAIT", 1, 1000)

        af.detach(replica)  # the replica goes away for a moment
        with pytest.raises(NotReplicated):
            intake.read_once()
        assert raw.hget(rt.store.job_key(job_id), "answer") == b"agent 7"  # taken by answer.lua all the same

        af.make_replica(replica, primary)  # back
        # ... and acknowledging writes again (the entry has been idle for over the 100 ms the claim wants since
        # read_once's WAIT timed out)
        wait_for(lambda: raw.execute_command("WAIT", 1, 1000) == 1, 15, "the replica to acknowledge writes")
        intake.claim_abandoned()  # the entry, handled again
        events = [
            {k.decode(): v.decode() for k, v in fields.items()}
            for _, fields in raw.xrange(settings.cekura_results_stream)
        ]
        left = raw.xlen(settings.cekura_requests_stream)
        answer = raw.hget(rt.store.job_key(job_id), "answer")
    rejected = [e for e in events if e.get("status") == "rejected"]
    assert answer == b"agent 7" and left == 0
    assert not rejected, f"the answer Cekura is being sent was published as rejected: {rejected[0]['error']!r}"


# -- 3. A start that must not repeat, and a failover that loses its mark ------------------------------------------


@pytest.mark.parametrize(
    "min_replicas",
    [
        pytest.param(
            0,
            marks=pytest.mark.xfail(
                strict=True,
                reason="documented (README, 'What holds across a failover'): with CEKURA_REDIS_MIN_REPLICAS=0 a "
                "failover that loses a start's mark may let the start be sent again",
            ),
        ),
        1,
    ],
)
def test_a_never_repeat_start_is_not_sent_twice_when_a_failover_loses_its_mark(
    servers: list[RedisServer], tmp_path: Path, sim: SimulatorHandle, min_replicas: int
) -> None:
    """README ("What a failover may lose", CEKURA_REDIS_MIN_REPLICAS=0): "a job whose last step was lost is re-run
    from its previous step by the reconciler (a poll again; a start that must not repeat is found again or failed,
    never sent twice)"; with =1 the writes that matter wait for replicas.

    Attack: the replica falls behind (here: is cut off) just before an evaluator run's start; the worker marks the
    start sent, calls Cekura, records the progress id, all on the old primary only (neither `mark_start` nor
    `advance` waits for a replica, whatever CEKURA_REDIS_MIN_REPLICAS says). The endpoint then fails over to the
    replica, which still has the job `queued` with its start message: the start runs again and Cekura gets a
    second `run_scenarios` for the same job."""
    fresh_sim(sim, duration_s=30.0)
    a, b = new_server(servers, tmp_path), new_server(servers, tmp_path)
    af.make_replica(b, a)
    endpoint = af.SwitchableEndpoint(a.port)
    settings = fast_settings(endpoint.url, sim, cekura_redis_min_replicas=min_replicas)
    rt = setup(settings)
    bind_actors()
    job_id = f"never-twice-{min_replicas}"
    client = Client(settings, client=rt.redis, broker=rt.broker)
    client.submit("evaluator.run", {"scenarios": [1, 2], "name": job_id}, job_id=job_id, deadline_s=120)
    with a.client() as raw:
        assert raw.execute_command("WAIT", 1, 2000) == 1  # the job and its start message are on the replica
    af.detach(b)  # the replica is cut off (async replication: it lags), and will be promoted

    worker = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=100)
    reconciler = Reconciler(rt)
    worker.start()
    reconciler.start()
    try:
        if min_replicas:
            # HELD since the mark waits for a replica (was BREAK: a second run_scenarios after the failover): with
            # no replica to take the mark, no start is sent at all; the attempts give the mark back and retry.
            with a.client() as raw:
                wait_for(lambda: int(raw.info("stats")["total_commands_processed"]) > 0, 5, "the worker to run")
                deadline = time.monotonic() + 4.0
                while time.monotonic() < deadline:
                    assert evaluator_starts(sim, job_id) == 0, "a start was sent that no replica had marked"
                    time.sleep(0.2)
            return  # the promoted replica has no replica of its own either: nothing may start there until one is
        else:
            with a.client() as raw:
                wait_for(
                    lambda: raw.hget(rt.store.job_key(job_id), "state") == b"polling",
                    20,
                    f"the start on the old primary: {raw.hgetall(rt.store.job_key(job_id))} {sim.stats()}",
                )
            assert evaluator_starts(sim, job_id) == 1
        endpoint.switch(b.port)  # failover: the endpoint now leads to the promoted replica
        a.stop()
        with b.client() as raw:

            def settled() -> bool:
                record = raw.hgetall(rt.store.job_key(job_id))
                return record.get(b"state") in (b"polling", b"finished") or record.get(b"start_sent") == b"1"

            wait_for(settled, 20, "the job to move on, on the new primary")
            time.sleep(1.0)
            record = {k.decode(): v.decode() for k, v in raw.hgetall(rt.store.job_key(job_id)).items()}
        starts = evaluator_starts(sim, job_id)
        assert starts == 1, (
            f"Cekura got {starts} run_scenarios calls for job {job_id} (a kind whose start must never repeat); "
            f"its record on the new primary: state={record.get('state')} start_sent={record.get('start_sent')!r}"
        )
    finally:
        reconciler.stop()
        worker.stop(timeout=10_000)
        reconciler.join(timeout=5)
        endpoint.close()


@pytest.mark.xfail(
    strict=True,
    reason="documented (README, 'What holds across a failover'): an event is readable from the moment it is "
    "written; a consumer that read one the replica never got sees the job end again after the failover",
)
def test_with_min_replicas_a_consumer_never_reads_two_events_for_one_job_across_a_failover(
    servers: list[RedisServer], tmp_path: Path, sim: SimulatorHandle
) -> None:
    """README, CEKURA_REDIS_MIN_REPLICAS=1: "a job's end and its event are on a replica before its message is
    acknowledged ... What remains is an event a consumer read in the instant between its write and the `WAIT`".

    Attack: the replica falls behind (is cut off) while a job ends. `finish.lua` publishes the event on the primary,
    `WAIT` answers 0, `NotReplicated` is raised, and the retried message finds the job finished and does nothing:
    the event stays readable on the primary for as long as the primary lives, not for an instant. A consumer reads
    it; the endpoint then fails over to the replica, where the job is still polling: it ends again, and the same
    consumer reads a second event for the job."""
    replica_lag_s = 3.0
    fresh_sim(sim, duration_s=1.0)
    a, b = new_server(servers, tmp_path), new_server(servers, tmp_path)
    af.make_replica(b, a)
    endpoint = af.SwitchableEndpoint(a.port)
    settings = fast_settings(endpoint.url, sim, cekura_redis_min_replicas=1, cekura_redis_wait_timeout_ms=300)
    rt = setup(settings)
    bind_actors()
    job_id = "ends-twice"
    consumer = Client(settings)
    seen: list[dict[str, str]] = []
    worker = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=100)
    reconciler = Reconciler(rt)
    worker.start()
    reconciler.start()
    try:
        Client(settings, client=rt.redis, broker=rt.broker).submit(
            "agent.auto_fetch", {"agent_id": 5}, job_id=job_id, deadline_s=60
        )
        with a.client() as raw:
            wait_for(lambda: raw.hget(rt.store.job_key(job_id), "state") == b"polling", 20, "the job to poll")
            assert raw.execute_command("WAIT", 1, 2000) == 1
        af.detach(b)  # the replica falls behind from here on
        last = "0"

        def read() -> None:
            nonlocal last
            for event in consumer.results(after=last):
                last = event["id"]
                if event["job_id"] == job_id:
                    seen.append(event)

        def first_seen() -> bool:
            read()
            return bool(seen)

        wait_for(first_seen, 20, "the consumer to read the job's event")
        time.sleep(replica_lag_s)  # the replica is still behind; the event stays readable all this time
        read()
        endpoint.switch(b.port)  # failover to the replica
        a.stop()

        def second_seen() -> bool:
            try:
                read()
            except redis.RedisError:
                return False
            return len(seen) > 1

        deadline = time.monotonic() + 20
        while not second_seen() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(seen) == 1, (
            f"one consumer read {len(seen)} result events for job {job_id} "
            f"({[(e['id'], e['status']) for e in seen]}); the first was readable, unreplicated, for "
            f"{replica_lag_s:g} s before the failover (the README says an instant)"
        )
    finally:
        reconciler.stop()
        worker.stop(timeout=10_000)
        reconciler.join(timeout=5)
        consumer.close()
        endpoint.close()


# -- 4. Sentinel discovery: a Sentinel that lies, a listed host that is not a Sentinel -----------------------------


def _sentinel_url(ports: list[int]) -> str:
    return "redis+sentinel://" + ",".join(f"127.0.0.1:{port}" for port in ports) + f"/{SERVICE}/0"


@pytest.mark.xfail(
    strict=True,
    reason="a limit (README, 'Redis Sentinel and failover'): with one of three Sentinels away and the two that answer "
    "naming different primaries with the same config-epoch, no majority and no newer view says which is right; the "
    "first listed is taken",
)
def test_one_unreachable_sentinel_does_not_hand_the_process_to_a_sentinel_whose_view_is_not_the_quorums(
    ha: RedisHA, servers: list[RedisServer], tmp_path: Path, prefix: str
) -> None:
    """README: "list them all, any one that answers will do"; "Each heartbeat also asks the Sentinels where the
    primary is and moves the process's connections when it changed".

    Attack: one of the three listed Sentinels is stale/misconfigured (it names another server as the primary of
    the service: a Sentinel left behind by a partition, or one of another deployment using the same service name).
    While the first Sentinel answers nothing happens; the moment it is unreachable for one heartbeat, redis-py asks
    the next one, takes its word (no check against the others: `min_other_sentinels=0`), moves it to the front of
    its list for good, and `follow_primary` moves every connection of the process to the other server."""
    other = new_server(servers, tmp_path)
    rogue = af.RogueSentinel(tmp_path / "rogue", SERVICE, other.port)
    first, _, third = ha.sentinels
    try:
        settings = load_settings(
            redis_url=_sentinel_url([first.port, rogue.port, third.port]), **fs.isolated_settings(prefix)
        )
        client = connect(settings)
        heartbeat = Heartbeat(client, settings, alive=lambda: True)
        primary = ha.primary().port
        heartbeat.beat()
        assert af.port_of(client.config_get("port")) == primary
        first.popen.kill()  # one Sentinel away: a restart, a network blip
        first.popen.wait(timeout=10)
        heartbeat.beat()
        landed = af.port_of(client.config_get("port"))
        client.set(settings.key("where-did-this-go"), "1")
        client.close()
        assert landed == primary, (
            f"the process moved to {landed}, the server one stale Sentinel names, away from the primary {primary} "
            "that the quorum of Sentinels names; its writes now go there"
        )
    finally:
        rogue.stop()


def test_a_listed_host_that_is_not_a_sentinel_does_not_hide_the_sentinels_that_answer(ha: RedisHA, prefix: str) -> None:
    """README: "list them all, any one that answers will do".

    Attack: the first listed host is a Redis node, not a Sentinel (a port typo: 6379 for 26379, here the replica's
    port). It answers `SENTINEL MASTERS` with an error reply; redis-py's discovery catches only connection errors
    and timeouts, so the `ResponseError` escapes and no connection can be made, although three Sentinels that
    answer are listed behind it."""
    replica = next(s for s in ha.servers if s.port != ha.primary().port)
    ports = [replica.port, *(s.port for s in ha.sentinels)]
    settings = load_settings(redis_url=_sentinel_url(ports), **fs.isolated_settings(prefix))
    client = connect(settings)
    try:
        try:
            outcome: Any = af.port_of(client.config_get("port"))
        except redis.RedisError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        assert outcome == ha.primary().port, f"with three Sentinels answering, connecting gave {outcome!r}"
    finally:
        client.close()


# -- 5. Memory: the policy changed at runtime, OOM in the middle of a step ----------------------------------------


def test_readiness_and_status_catch_an_evicting_policy_set_while_running(system: Any) -> None:
    """README: readiness fails saying why when `maxmemory-policy` is not noeviction; `status` shows the policy.
    Attack: the policy changes under a running worker (start-up was fine)."""
    server = system.redis()
    sim = system.simulator()
    env = {**system.worker_env(server, sim), "PYTHONPATH": str(GUARD_DIR), "TEST_FORBIDDEN_REDIS_PORTS": "6379"}
    run = system.worker(env, processes=1, threads=2)
    wait_for(lambda: system.cli(env, "healthcheck", "--readiness").returncode == 0, 20, "readiness")
    with server.client() as raw:
        raw.config_set("maxmemory-policy", "allkeys-lru")
    ready, status = system.cli_many([(env, ["healthcheck", "--readiness"]), (env, ["status", "--format", "json"])])
    assert ready.returncode != 0 and "allkeys-lru" in ready.stdout + ready.stderr, (ready.stdout, ready.stderr)
    assert json.loads(status.stdout)["redis_memory"]["policy"] == "allkeys-lru"
    assert run.popen.poll() is None


def test_oom_in_the_middle_of_a_finish_or_an_advance_writes_all_or_nothing(
    servers: list[RedisServer], tmp_path: Path, sim: SimulatorHandle
) -> None:
    """README: "A job's final state and its event are written by one Lua script"; "Recording a poll and scheduling
    the next one are one atomic step". Attack: Redis reaches maxmemory (noeviction) right before the script."""
    import actors.jobs as jobs
    from worker.store.records import Phase

    server = new_server(servers, tmp_path)
    settings = fast_settings(server.url, sim)
    rt = setup(settings)
    bind_actors()
    store = rt.store
    store.submit("oom-finish", "agent.auto_fetch", {"agent_id": 5}, {}, 600, {})
    store.submit("oom-advance", "agent.auto_fetch", {"agent_id": 5}, {}, 600, {})
    claim = store.claim("oom-advance", Phase.START, 0)
    assert claim.verdict.value == "ok" and claim.job is not None
    seq = claim.job.seq

    with server.client() as raw:
        raw.config_set("maxmemory", int(raw.info("memory")["used_memory"]) - 1024)
        try:
            outcomes: dict[str, str] = {}
            try:
                outcomes["finish"] = store.finish("oom-finish", "any", 0, {"status": "cancelled"}).verdict.value
            except redis.RedisError as exc:
                outcomes["finish"] = type(exc).__name__
            try:
                with rt.broker.outbox() as scheduled:
                    jobs.poll.send_with_options(args=("oom-advance", seq + 1), delay=1000)
                    verdict = store.advance(
                        "oom-advance",
                        Phase.START,
                        seq,
                        next_state="polling",
                        delay_ms=1000,
                        fields={"progress_id": "p-1"},
                        scheduled=scheduled,
                    )
                outcomes["advance"] = verdict.verdict.value
            except redis.RedisError as exc:
                outcomes["advance"] = type(exc).__name__
        finally:
            raw.config_set("maxmemory", 0)
        finish_state = raw.hget(store.job_key("oom-finish"), "state")
        events = raw.xlen(settings.cekura_results_stream)
        advance_state = raw.hget(store.job_key("oom-advance"), "state")
        namespace = settings.key("dramatiq")
        messages = raw.hlen(f"{namespace}:{settings.cekura_queue}.msgs")
    # all or nothing: finished with its event, or neither
    assert (finish_state == b"finished") == (events == 1), (outcomes, finish_state, events)
    # advanced with its next poll message, or neither
    assert (advance_state == b"polling") == (messages == 1), (outcomes, advance_state, messages)
    print(f"\nunder OOM: {outcomes}")


# -- 6. Every Sentinel hung for 20 s (the primary itself is fine) -------------------------------------------------


@dataclass(frozen=True)
class _Endpoint:
    url: str


def _guarded(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {
        **env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(GUARD_DIR), os.environ.get("PYTHONPATH", "")])),
        "TEST_FORBIDDEN_REDIS_PORTS": str(fs.MACHINE_REDIS_PORT),
        "CEKURA_HEALTH_DIR": str(tmp_path / "health"),
    }


def test_all_sentinels_hung_for_20s_the_worker_keeps_serving_and_beating_on_the_reachable_primary(
    ha: RedisHA, system: Any, prefix: str, tmp_path: Path
) -> None:
    """README: "A failover is a reconnect, not a death"; the Sentinels are asked "when it opens a connection" and
    by each heartbeat. Attack: all three Sentinels stop answering (SIGSTOP: a network black hole, not a refused
    connection) for 20 s while the primary is healthy. Jobs put on the primary meanwhile must be served, the
    process must keep its Redis heartbeat (what readiness and `status` read), liveness must stay green, and
    everything must carry on when the Sentinels are back."""
    sim = system.simulator("--duration", "0.3")
    env = _guarded(system.worker_env(_Endpoint(ha.url), sim, **fs.isolated_env(prefix)), tmp_path)
    run = system.worker(env, processes=1, threads=4)
    pid = run.worker_pids()[0]
    client = Client(load_settings(redis_url=ha.url, **fs.isolated_settings(prefix)))
    primary = ha.primary()
    member = fs.member_of(pid)
    events_during: list[str] = []
    try:
        client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="before", deadline_s=60)
        client.wait("before", timeout=20)
        for sentinel in ha.sentinels:
            with_signal(sentinel.popen.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        gaps: list[float] = []
        liveness: list[int] = []
        submitted: list[str] = []
        with primary.client() as raw:
            last_beat = time.monotonic()
            i = 0
            while time.monotonic() - stopped < 20:
                job_id = f"during-{i}"
                i += 1
                request = {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": job_id, "deadline_s": 60}
                raw.xadd(f"{prefix}:requests", {"request": json.dumps(request)})
                submitted.append(job_id)
                time.sleep(2)
                if member in fs.live_members(raw, prefix, within_ms=1500):
                    last_beat = time.monotonic()
                gaps.append(time.monotonic() - last_beat)
                liveness.append(system.cli(env, "healthcheck", "--liveness").returncode)
            events_during = [fs.answered(e) for _, e in fs.results(raw, prefix)]
        for sentinel in ha.sentinels:
            with_signal(sentinel.popen.pid, signal.SIGCONT)
        client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="after", deadline_s=60)
        client.wait("after", timeout=30)
        served_during = [job_id for job_id in submitted[:-2] if job_id in events_during]
        assert run.worker_pids() == [pid] and set(liveness) == {0}, (run.worker_pids(), liveness)
        assert len(served_during) == len(submitted[:-2]), (
            f"only {len(served_during)} of {len(submitted) - 2} jobs queued on the healthy primary were served while "
            "the Sentinels were away"
        )
        assert max(gaps) < 5, (
            f"the process's Redis heartbeat stopped for {max(gaps):.0f} s while its primary was reachable (heartbeat "
            f"every 1 s; readiness and status call it dead after 3 s); gaps seen: {[round(g) for g in gaps]}"
        )
    finally:
        for sentinel in ha.sentinels:
            with_signal(sentinel.popen.pid, signal.SIGCONT)
        client.close()


# -- 7. CEKURA_REDIS_MIN_REPLICAS=1 with no replica at all -----------------------------------------------------------


def test_min_replicas_without_any_replica_readiness_and_status_say_why(system: Any, tmp_path: Path) -> None:
    """Attack: CEKURA_REDIS_MIN_REPLICAS=1 on a Redis with no replica. Every submission raises `NotReplicated`, every
    request entry stays pending, every finished job's step is retried: the service can't accept anything. Do the
    operator's tools say so? (Readiness checks Redis and heartbeats only; `status` has nothing on replicas.)"""
    server = system.redis()
    sim = system.simulator("--duration", "0.3")
    env = _guarded(
        system.worker_env(server, sim, CEKURA_REDIS_MIN_REPLICAS="1", CEKURA_REDIS_WAIT_TIMEOUT_MS="200"), tmp_path
    )
    system.worker(env, processes=1, threads=2)
    with server.client() as raw:
        raw.xadd("cekura:requests", {"request": json.dumps({"kind": "agent.auto_fetch", "params": {"agent_id": 5}})})
    time.sleep(3)
    ready, status = system.cli_many([(env, ["healthcheck", "--readiness"]), (env, ["status", "--format", "json"])])
    said = (ready.stdout + ready.stderr + status.stdout).lower()
    assert ready.returncode != 0 and "replica" in said, (
        f"readiness exit {ready.returncode}: {ready.stdout.strip()!r}; status says nothing of replicas: "
        f"{sorted(json.loads(status.stdout))}"
    )


@pytest.mark.xfail(
    strict=True,
    reason="documented (README): NotReplicated from submit means 'not yet safe', not 'refused': the job is "
    "recorded on the primary and may run; submitting again with the same job_id keeps it",
)
def test_min_replicas_without_any_replica_a_refused_submission_does_not_run(system: Any, tmp_path: Path) -> None:
    """README: with CEKURA_REDIS_MIN_REPLICAS=1 "a job counts as accepted (the client returns ...) only once a
    replica holds it ... short of that ... the write is not relied on (`NotReplicated`: the client raises)".

    Attack: no replica at all. The client raises `NotReplicated` for the submission, yet `submit` had already
    recorded the job and written its start message before its `WAIT`: the job runs at Cekura and ends with a
    result event. A producer that took the error at its word (and resubmitted under a new id, or gave up) has
    an operation it doesn't know about, or two."""
    server = system.redis()
    sim = system.simulator("--duration", "0.3")
    env = _guarded(
        system.worker_env(server, sim, CEKURA_REDIS_MIN_REPLICAS="1", CEKURA_REDIS_WAIT_TIMEOUT_MS="200"), tmp_path
    )
    system.worker(env, processes=1, threads=2)
    client = system.client(server, cekura_redis_min_replicas=1, cekura_redis_wait_timeout_ms=200)
    with pytest.raises(NotReplicated):
        client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="refused", deadline_s=60)
    time.sleep(4)
    with server.client() as raw:
        ran = [e for e in system.result_events(raw) if e["job_id"] == "refused"]
    started = sim.stats()["started_by_kind"]["auto_fetch"]
    assert not ran, (
        f"the submission the client refused was started at Cekura ({started} auto-fetch start) and ended "
        f"{ran[0]['status']} with a result event"
    )


# -- 8. READONLY for 30 s on a plain redis:// URL -------------------------------------------------------------------


def _role(server: RedisServer) -> str:
    with server.client() as c:
        return str(c.info("replication")["role"])


def test_readonly_for_30s_on_a_plain_url_threads_survive_liveness_stays_green_and_every_job_ends_once(
    system: Any, tmp_path: Path
) -> None:
    """README: "no worker thread ever dies of a Redis error"; "Liveness (local files) stays green through it all".
    Attack: the server a plain URL names is a replica (READONLY to every write) for 30 s, ten times the retry budget,
    with jobs in flight; then a primary again."""
    a, b = system.redis(), system.redis()
    af.make_replica(b, a)
    sim = system.simulator("--duration", "2")
    env = _guarded(system.worker_env(a, sim), tmp_path)
    run = system.worker(env, processes=1, threads=4)
    pid = run.worker_pids()
    client = system.client(a)
    jobs = [f"ro-{i}" for i in range(12)]
    for job_id in jobs[:8]:
        client.submit("agent.auto_fetch", {"agent_id": 5}, job_id=job_id, deadline_s=90)
    with a.client() as raw:
        wait_for(lambda: raw.hget("cekura:job:ro-0", "state") == b"polling", 20, "jobs to poll")
        raw.execute_command("FAILOVER", "TO", "127.0.0.1", b.port, "TIMEOUT", 5000)
    wait_for(lambda: _role(a) == "slave", 15, "a to be a replica")
    began = time.monotonic()
    liveness = []
    while time.monotonic() - began < 30:
        liveness.append(system.cli(env, "healthcheck", "--liveness").returncode)
        time.sleep(3)
    with a.client() as ca:
        ca.replicaof("NO", "ONE")
    with b.client() as cb:
        cb.replicaof("127.0.0.1", a.port)
    for job_id in jobs[8:]:
        client.submit("agent.auto_fetch", {"agent_id": 5}, job_id=job_id, deadline_s=90)
    with a.client() as raw:
        system.wait_all_finished(raw, set(jobs), timeout=45)
        time.sleep(2.5)
        counts = system.assert_exactly_one_event_each(raw, set(jobs))
        statuses = {e["job_id"]: e["status"] for e in system.result_events(raw)}
    assert set(liveness) == {0}, liveness
    assert run.worker_pids() == pid, "the worker process was restarted:\n" + run.tail()
    dead = [line for line in run.lines() if "worker_threads_dead" in line or "worker_process_died" in line]
    assert not dead, dead[:3]
    assert set(statuses.values()) == {"completed"}, statuses
    assert sum(counts.values()) == len(jobs)


# -- 9. The CLI on a Sentinel URL, with passwords --------------------------------------------------------------------

NODE_PASSWORD = "node-Secret-4711"
SENTINEL_PASSWORD = "sentinel-Secret-0815"


def _protect(ha: RedisHA) -> None:
    """Passwords on the Redis nodes (and the Sentinels' auth-pass for them) and on the Sentinels themselves."""
    for server in ha.servers:
        with server.client() as c:
            c.config_set("masterauth", NODE_PASSWORD)
            c.config_set("requirepass", NODE_PASSWORD)
    for sentinel in ha.sentinels:
        with sentinel.client() as c:
            c.execute_command("SENTINEL", "SET", SERVICE, "auth-pass", NODE_PASSWORD)
            c.execute_command("ACL", "SETUSER", "default", "on", "resetpass", f">{SENTINEL_PASSWORD}")


def test_the_cli_on_a_sentinel_url_with_passwords_reaches_the_primary_and_never_prints_a_password(
    ha: RedisHA, system: Any, prefix: str, tmp_path: Path
) -> None:
    """README: "`REDIS_SENTINEL_PASSWORD` ... sent to the Sentinels only"; the node password in the URL is "redacted
    in output like any other"; the Redis password is masked "wherever text leaves the process". Attack: every
    producer-side command through the Sentinels (nothing may fall back to 6379: the guard refuses it), with the
    right passwords, with a wrong Sentinel password, a wrong node password, and with no Sentinel answering."""
    _protect(ha)
    sim = system.simulator()
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in ha.sentinels)
    good = _guarded(
        {
            **system.worker_env(_Endpoint(f"redis+sentinel://:{NODE_PASSWORD}@{hosts}/{SERVICE}/0"), sim),
            **fs.isolated_env(prefix),
            "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        },
        tmp_path,
    )
    wrong_sentinel = {**good, "REDIS_SENTINEL_PASSWORD": "not-the-sentinel-pass"}
    wrong_node = {**good, "REDIS_URL": f"redis+sentinel://:not-the-node-pass@{hosts}/{SERVICE}/0"}
    nobody = {**good, "REDIS_URL": f"redis+sentinel://:{NODE_PASSWORD}@127.0.0.1:1,127.0.0.1:2/{SERVICE}/0"}
    commands = [
        ["submit", "agent.auto_fetch", "-p", "agent_id=5", "--job-id", "cli-job"],
        ["status", "cli-job"],
        ["status", "--format", "json"],
        ["status"],
        ["cancel", "cli-job"],
        ["dead", "list"],
        ["results"],
        ["healthcheck", "--readiness"],
    ]
    runs = {"good": good, "wrong_sentinel": wrong_sentinel, "wrong_node": wrong_node, "nobody": nobody}
    outputs: dict[tuple[str, str], Any] = {}
    hung: dict[tuple[str, str], float] = {}

    def one(name: str, env: dict[str, str], args: list[str]) -> None:
        started = time.monotonic()
        try:
            outputs[(name, " ".join(args[:2]))] = system.cli(env, *args, timeout=25)
        except subprocess.TimeoutExpired as exc:
            hung[(name, " ".join(args[:2]))] = time.monotonic() - started
            out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            outputs[(name, " ".join(args[:2]))] = subprocess.CompletedProcess(args, -9, out, err)

    for args in commands[:1]:  # the job first, then everything else at once
        one("good", good, args)
    # Through a wrong Sentinel password or no Sentinel at all, a Client command takes 50-75 s to give up (every
    # command's retries times every connect's retries times each Sentinel client's own retries): readiness only,
    # and `status` with a wrong node password (refused at once).
    bad = [["healthcheck", "--readiness"]]
    threads = [
        threading.Thread(target=one, args=(name, env, args))
        for name, env in runs.items()
        for args in (
            commands if name == "good" else bad + ([["status", "--format", "json"]] if name == "wrong_node" else [])
        )
        if (name, " ".join(args[:2])) not in outputs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    leaks = {
        key: secret
        for key, done in outputs.items()
        for secret in (NODE_PASSWORD, SENTINEL_PASSWORD)
        if secret in done.stdout + done.stderr
    }
    strays = {
        key: (done.stdout + done.stderr)[-300:]
        for key, done in outputs.items()
        if "test guard" in done.stdout + done.stderr
    }
    assert not leaks, f"passwords printed: {leaks}"
    assert not strays, f"connections that fell back to 6379: {strays}"
    failed_good = {
        key: (done.returncode, (done.stdout + done.stderr)[-300:])
        for key, done in outputs.items()
        if key[0] == "good" and done.returncode != 0 and key[1] != "healthcheck --readiness"
    }
    assert not failed_good, failed_good
    with ha.sentinels[1].client(password=SENTINEL_PASSWORD) as c:
        port = int(c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1])
    with ha.server(port).client(password=NODE_PASSWORD) as raw:
        assert raw.hget(f"{prefix}:job:cli-job", "state") == b"finished"
    assert not hung, f"commands still running after 25 s: {hung}"
    bad_ok = [key for key, done in outputs.items() if key[0] != "good" and done.returncode == 0 and key[1] != "results"]
    assert not bad_ok, f"commands that claimed success with wrong credentials or no Sentinel: {bad_ok}"


def test_readiness_with_one_hung_sentinel_answers_within_the_probe_timeout(ha: RedisHA, prefix: str) -> None:
    """worker/ops/health.py: readiness "makes one connection with short timeouts (2 s) and no retries"; the
    deployment's readiness probe has `timeoutSeconds: 5`; README: "list them all, any one that answers will do".

    Attack: the first listed Sentinel hangs (SIGSTOP: a host that is gone without a RST). The Sentinel clients that
    `_sentinel_primary` builds get no `retry` in `sentinel_kwargs`, so redis-py's default (3 retries, exponential
    backoff with jitter) applies to each Sentinel: the probe spends (2 s timeout x 4) + backoff on the one hung
    Sentinel before asking the next, well past its 5 s, though two Sentinels and the primary answer at once."""
    from worker.ops.health import check

    settings = load_settings(redis_url=ha.url, **fs.isolated_settings(prefix))
    with ha.primary().client() as raw:  # a live worker on this host, so readiness would say ok
        seconds, micros = raw.time()
        raw.zadd(f"{prefix}:workers", {f"{socket.gethostname()}:1": int(seconds) * 1000 + int(micros) // 1000})
    first = ha.sentinels[0]
    started = time.monotonic()
    ok, why = check(settings)
    assert ok, why
    baseline = time.monotonic() - started
    with_signal(first.popen.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        ok, why = check(settings)
        took = time.monotonic() - started
    finally:
        with_signal(first.popen.pid, signal.SIGCONT)
    assert took < 5.0, (
        f"readiness took {took:.1f} s (vs {baseline:.1f} s with every Sentinel up) because one of three Sentinels "
        f"hangs: the probe (timeoutSeconds 5) fails on every pod; it said {why!r}"
    )


# -- 10. Two failovers back and forth, in quick succession ---------------------------------------------------------


def test_two_failovers_back_and_forth_lose_no_accepted_job_and_end_each_once(
    ha: RedisHA, system: Any, prefix: str
) -> None:
    """README: "Every accepted job ended with exactly one event, both processes served on". Attack: the primary is
    SIGKILLed, comes back as the new primary's replica, and as soon as it has synced the new primary is SIGKILLed
    too, so the Sentinels move the service back within seconds, while jobs are submitted throughout."""
    from tests.system.test_failover import _fleet, _wait_or_explain

    runs, client, _ = _fleet(system, ha, prefix)
    try:
        submitter = fs.Submitter(client, system.job_mix(120), prefix=prefix, interval_s=0.05, deadline_s=60)
        submitter.start()
        with ha.primary().client() as raw:
            _wait_or_explain(lambda: submitter.count >= 20 and fs.results(raw, prefix), runs, "a few results")
        first = ha.kill_primary()
        second_port = ha.wait_new_primary(first.port)
        back = ha.restart(first, replica_of=second_port)
        ha.wait_linked(back, timeout=20)
        second = ha.kill_primary()
        assert ha.wait_new_primary(second.port) == first.port
        ha.wait_linked(ha.restart(second, replica_of=first.port), timeout=20)
        submitter.join(timeout=60)
        assert submitter.failure is None, repr(submitter.failure)
        done = submitter.done
        tails = "\n---\n".join(run.tail(30) for run in runs)
        with ha.primary().client() as raw:
            fs.wait_accepted_finished(raw, prefix, done, timeout=40, tail=tails)
            time.sleep(2.5)
            fs.count_events(raw, prefix, done)
        for run in runs:
            assert run.popen.poll() is None, run.tail()
        print(f"\naccepted {len(done.accepted)}, unconfirmed {len(done.unconfirmed)}, errors {dict(done.errors)}")
    finally:
        client.close()


# -- 11. A replica that stalls, again and again, under CEKURA_REDIS_MIN_REPLICAS=1 --------------------------------


def test_a_stalling_replica_makes_nothing_lost_or_doubled(
    servers: list[RedisServer], tmp_path: Path, sim: SimulatorHandle
) -> None:
    """README, CEKURA_REDIS_MIN_REPLICAS=1: `NotReplicated` means "the client raises, the entry is handled again, the
    step is retried". Attack: the replica stalls (SIGSTOP) for 1.5 s out of every 2.5 s while jobs arrive through the
    stream and the client and end: does a NotReplicated anywhere record a job twice, publish two events, reject an
    entry, or leave one behind?"""
    fresh_sim(sim, duration_s=0.5)
    primary, replica = new_server(servers, tmp_path), new_server(servers, tmp_path)
    af.make_replica(replica, primary)
    settings = fast_settings(primary.url, sim, cekura_redis_min_replicas=1, cekura_redis_wait_timeout_ms=200)
    rt = setup(settings)
    bind_actors()
    worker = dramatiq.Worker(rt.broker, worker_threads=4, worker_timeout=100)
    intake = Intake(rt, name="attack", claim_idle_ms=500)
    reconciler = Reconciler(rt)
    client = Client(settings, client=rt.redis, broker=rt.broker)
    stop = threading.Event()
    assert replica.popen is not None
    replica_pid = replica.popen.pid

    def stall() -> None:
        while not stop.is_set():
            with_signal(replica_pid, signal.SIGSTOP)
            stop.wait(1.5)
            with_signal(replica_pid, signal.SIGCONT)
            stop.wait(1.0)

    staller = threading.Thread(target=stall, daemon=True)
    jobs = [f"stall-{i:02d}" for i in range(24)]
    refused = 0
    worker.start()
    intake.start()
    reconciler.start()
    staller.start()
    try:
        with primary.client() as raw:
            for i, job_id in enumerate(jobs):
                if i % 2:
                    request = {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": job_id}
                    raw.xadd(settings.cekura_requests_stream, {"request": json.dumps(request)})
                else:
                    while True:  # a producer retries NotReplicated with the same job id
                        try:
                            client.submit("agent.auto_fetch", {"agent_id": 5}, job_id=job_id, deadline_s=60)
                            break
                        except NotReplicated:
                            refused += 1
                            time.sleep(0.2)
                time.sleep(0.2)
            stop.set()
            staller.join(timeout=5)
            with_signal(replica_pid, signal.SIGCONT)
            wait_for(lambda: raw.xlen(settings.cekura_requests_stream) == 0, 30, "every request entry acknowledged")
            finished = system_wait_finished(raw, settings, set(jobs), timeout=30)
            time.sleep(2.5)
            events = [
                {k.decode(): v.decode() for k, v in fields.items()}
                for _, fields in raw.xrange(settings.cekura_results_stream)
            ]
        per_job = {job_id: sum(1 for e in events if e.get("job_id") == job_id) for job_id in jobs}
        rejected = [e for e in events if e.get("status") == "rejected"]
        assert not rejected, rejected[:2]
        assert all(n == 1 for n in per_job.values()), per_job
        assert set(finished.values()) == {"completed"}, finished
        print(f"\nsubmissions refused with NotReplicated and retried: {refused}")
    finally:
        stop.set()
        with_signal(replica_pid, signal.SIGCONT)
        intake.stop()
        reconciler.stop()
        worker.stop(timeout=10_000)
        intake.join(timeout=5)
        reconciler.join(timeout=5)


def system_wait_finished(raw: redis.Redis, settings: Settings, job_ids: set[str], timeout: float) -> dict[str, str]:
    def states() -> dict[str, str] | None:
        out = {}
        for job_id in job_ids:
            record = raw.hmget(f"{settings.cekura_key_prefix}:job:{job_id}", "state", "status")
            if record[0] != b"finished":
                return None
            out[job_id] = record[1].decode()
        return out

    return wait_for(states, timeout, "every job to finish")
