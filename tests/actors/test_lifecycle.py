"""A job's life through a real worker, real Redis and the simulator over HTTP: its result event, its status while
it runs, duplicate submissions and messages, cancellation from every producer, deadlines and progress events."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import dramatiq
import httpx
import pytest

from actors import names
from config.settings import Settings, get_settings, load_settings
from simulator import SimulatorHandle
from tests.support import RESULT_EVENT_FIELDS, pending_messages, wait_for
from worker.cli import EXIT_FAILED, EXIT_OK, main
from worker.client import Client
from worker.intake.stream import Intake
from worker.runtime.app import Runtime

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
STAGES = ["validate", "prompt", "settings", "phone", "tools", "dynamic_variables", "kb", "finalize"]
SCENARIO_PROGRESS = "/test_framework/v1/scenarios/scenario-agent-progress/"
AUTO_FETCH_PROGRESS = "/test_framework/v2/aiagents/{agent}/auto-fetch-progress/"


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The shared test settings, with a test's `indirect` overrides (validated like any other settings)."""
    overrides = getattr(request, "param", {})
    return load_settings(**{**settings.model_dump(), **overrides}) if overrides else settings


# -- helpers ------------------------------------------------------------------------------------------------------


def events_for(client: Client, job_id: str) -> list[dict[str, str]]:
    return [e for e in client.results() if e["job_id"] == job_id]


def route_count(sim: SimulatorHandle, route: str) -> int:
    return int(sim.stats()["by_route"].get(route, 0))


def poll_times(sim: SimulatorHandle, progress_id: str) -> list[float]:
    return list(sim.polls().get(progress_id, {}).get("times", []))


def running(client: Client, job_id: str, min_polls: int = 1) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        view = client.status(job_id)
        if view and view.get("state") == "polling" and view.get("polls", 0) >= min_polls:
            return view
        return None

    return probe


def drained(rt: Runtime) -> bool:
    """True when no message is queued, delayed or being processed: nothing is left that could call Cekura."""
    return pending_messages(rt.redis, rt.broker.namespace, rt.settings.cekura_queue) == 0


def settled(rt: Runtime, job_id: str) -> Callable[[], bool]:
    """True once no message about `job_id` is queued, delayed or being processed: any call it was to make is made."""
    return lambda: pending_messages(rt.redis, rt.broker.namespace, rt.settings.cekura_queue, job_id) == 0


def iso(text: str) -> datetime:
    assert ISO_UTC.fullmatch(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def sim_get(sim: SimulatorHandle, path: str, progress_id: str) -> dict[str, Any]:
    """Ask the simulator directly, as Cekura's own client would (counts as a poll there)."""
    with httpx.Client(base_url=sim.url, headers={"X-CEKURA-API-KEY": sim.api_key}, timeout=5, trust_env=False) as http:
        response = http.get(path, params={"progress_id": progress_id})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def set_cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """The CLI reads settings from the environment: point it at the test Redis."""
    monkeypatch.setenv("REDIS_URL", settings.redis_url.get_secret_value())
    monkeypatch.setenv("CEKURA_API_URL", settings.cekura_api_url)
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _clear_settings_cache() -> Iterator[None]:
    yield
    get_settings.cache_clear()


# -- the result event ---------------------------------------------------------------------------------------------


def test_a_completed_job_publishes_one_result_event_with_exact_fields(
    client: Client, worker: dramatiq.Worker, sim: SimulatorHandle
) -> None:
    before = datetime.now().astimezone()
    metadata = {"ticket": "T-1", "n": 2, "nested": {"a": [1, None, True]}, "text": "café ✓"}
    job_id = client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="fields-1", metadata=metadata)
    assert job_id == "fields-1"
    client.wait(job_id, timeout=15)
    after = datetime.now().astimezone()

    (progress_id,) = sim.polls()  # the only Cekura job since the reset
    polls_seen = len(poll_times(sim, progress_id))
    entries = events_for(client, job_id)
    assert len(entries) == 1
    entry = dict(entries[0])
    entry.pop("id")
    assert set(entry) == RESULT_EVENT_FIELDS
    assert entry["job_id"] == "fields-1"
    assert entry["kind"] == "agent.auto_fetch"
    assert entry["status"] == "completed"
    assert entry["cekura_status"] == "completed"
    assert entry["progress_id"] == progress_id
    assert entry["error"] == ""
    assert entry["polls"] == str(polls_seen)
    assert polls_seen >= 1
    assert json.loads(entry["metadata"]) == metadata
    submitted, finished = iso(entry["submitted_at"]), iso(entry["finished_at"])
    assert submitted.utcoffset() is not None and submitted.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert before.replace(microsecond=0) <= submitted.replace(microsecond=0) <= finished <= after
    # `result` is the final progress payload, byte for byte what Cekura answers for this progress id
    final = sim_get(sim, AUTO_FETCH_PROGRESS.format(agent=5), progress_id)
    assert json.loads(entry["result"]) == final
    assert entry["result"] == json.dumps(final, separators=(",", ":"), ensure_ascii=False)
    assert final["status"] == "completed"
    assert [stage["status"] for stage in final["stages"]] == ["completed"] * len(STAGES)
    # the job record agrees with the event
    assert client.wait(job_id) == entry


def test_a_running_job_status_shows_its_progress(client: Client, worker: dramatiq.Worker, sim: SimulatorHandle) -> None:
    job_id = client.submit("agent.auto_fetch", {"agent_id": 777}, metadata={"who": "status-test"})  # never finishes
    try:
        first = wait_for(running(client, job_id, min_polls=2), what="two polls")
        second = wait_for(running(client, job_id, min_polls=first["polls"] + 2), what="more polls")
    finally:
        client.cancel(job_id)
    for view in (first, second):
        assert view["job_id"] == job_id
        assert view["kind"] == "agent.auto_fetch"
        assert view["state"] == "polling"
        assert view["cekura_status"] in ("queued", "in_progress")
        assert view["current_stage"] in STAGES
        assert view["params"] == {"agent_id": 777}
        assert view["metadata"] == {"who": "status-test"}
        assert view["progress_id"] in sim.polls()
        for name in ("submitted_at", "started_at", "next_poll_at", "deadline_at"):
            iso(view[name])
        assert not {"lease", "seq", "updated_ms"} & set(view)  # internals stay internal
    assert second["polls"] > first["polls"]
    assert STAGES.index(second["current_stage"]) >= STAGES.index(first["current_stage"])
    assert iso(second["next_poll_at"]) >= iso(first["next_poll_at"])


# -- duplicates ---------------------------------------------------------------------------------------------------


def test_two_identical_client_submissions_make_one_job_and_one_start_call(
    client: Client, worker: dramatiq.Worker, sim: SimulatorHandle, rt: Runtime
) -> None:
    first = client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="dup-client")
    second = client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="dup-client")
    assert first == second == "dup-client"
    assert client.wait("dup-client", timeout=15)["status"] == "completed"
    third = client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="dup-client")  # after it finished
    assert third == "dup-client"
    wait_for(lambda: drained(rt), what="queue drained")
    assert route_count(sim, "auto-fetch 202") == 1
    assert sim.stats()["started_jobs"] == 1
    assert len(events_for(client, "dup-client")) == 1


def test_a_start_message_delivered_twice_makes_one_start_call(
    client: Client, worker: dramatiq.Worker, sim: SimulatorHandle, rt: Runtime
) -> None:
    from actors.jobs import start

    job_id = client.submit("scenario.agent", {"user_message": "twice"}, job_id="dup-start")
    queue = rt.settings.cekura_queue
    rt.broker.enqueue(dramatiq.Message(queue_name=queue, actor_name=names.START, args=(job_id,), kwargs={}, options={}))
    start.send(job_id)
    assert client.wait(job_id, timeout=15)["status"] == "completed"
    start.send(job_id)  # and once more after it finished
    wait_for(lambda: drained(rt), what="queue drained")
    assert route_count(sim, "scenario-agent 200") == 1
    assert len(events_for(client, job_id)) == 1


# -- cancellation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["client", "cli", "stream"])
def test_cancelling_a_running_scenario_agent_job_stops_it_here_and_at_cekura(
    channel: str,
    client: Client,
    worker: dramatiq.Worker,
    sim: SimulatorHandle,
    rt: Runtime,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = client.submit("scenario.agent", {"user_message": "bystander [hang]"}, job_id="bystander")
    job_id = client.submit("scenario.agent", {"user_message": "stop me [hang]"}, job_id=f"cancel-{channel}")
    view = wait_for(running(client, job_id), what="the job polling")
    other_view = wait_for(running(client, other), what="the bystander polling")
    session, progress_id = view["session_id"], view["progress_id"]
    assert session != other_view["session_id"]

    if channel == "client":
        outcome = client.cancel(job_id)
        assert (outcome.result, outcome.status) == ("cancelled", "cancelled")
    elif channel == "cli":
        set_cli_env(monkeypatch, settings)
        assert main(["cancel", job_id]) == EXIT_OK
        assert f"job {job_id} cancelled" in capsys.readouterr().out
    else:
        intake = Intake(rt, name="test-consumer")
        intake.ensure_group()
        rt.redis.xadd(
            rt.settings.cekura_requests_stream, {"request": json.dumps({"action": "cancel", "job_id": job_id})}
        )
        assert intake.read_once() == 1
        assert rt.redis.xlen(rt.settings.cekura_requests_stream) == 0

    event = client.wait(job_id, timeout=5)
    assert event["status"] == "cancelled"
    assert event["error"] == "cancelled by request"
    assert event["progress_id"] == progress_id
    wait_for(lambda: route_count(sim, "cancel-agent 200") == 1, what="the cancel-agent call")

    # Polling stops for the cancelled job, but not for the bystander. A poll claimed before the cancel may still
    # land: once no message about the job is left (its own poll, now stale, included), every such poll has.
    wait_for(settled(rt, job_id), what="the cancelled job's last messages to be handled")
    mine, theirs = len(poll_times(sim, progress_id)), len(poll_times(sim, other_view["progress_id"]))
    # Three more bystander polls (0.2 s apart at most): a cancelled job still polling would have polled meanwhile.
    wait_for(lambda: len(poll_times(sim, other_view["progress_id"])) >= theirs + 3, what="three more bystander polls")
    assert len(poll_times(sim, progress_id)) == mine

    # Cekura cancelled exactly that session: its job now reads cancelled, the bystander's still runs
    mine_at_cekura = sim_get(sim, SCENARIO_PROGRESS, progress_id)
    assert (mine_at_cekura["status"], mine_at_cekura["session_id"]) == ("cancelled", session)
    assert sim_get(sim, SCENARIO_PROGRESS, other_view["progress_id"])["status"] == "in_progress"
    assert route_count(sim, "cancel-agent 200") == 1
    assert route_count(sim, "cancel-agent 400") == 0

    client.cancel(other)
    entries = events_for(client, job_id)
    assert [e["status"] for e in entries] == ["cancelled"]


def test_cancelling_a_finished_or_unknown_job_answers_clearly_and_publishes_nothing(
    client: Client,
    worker: dramatiq.Worker,
    sim: SimulatorHandle,
    rt: Runtime,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = client.submit("scenario.agent", {"user_message": "quick"}, job_id="done-1")
    assert client.wait(job_id, timeout=15)["status"] == "completed"

    finished = client.cancel(job_id)
    assert (finished.result, finished.status) == ("already_finished", "completed")
    assert finished.message == "job done-1 had already finished (completed); nothing to cancel"
    unknown = client.cancel("never-submitted")
    assert (unknown.result, unknown.status) == ("unknown", "")
    assert "never-submitted" in unknown.message

    intake = Intake(rt, name="test-consumer")
    intake.ensure_group()
    stream = rt.settings.cekura_requests_stream
    for target in ("done-1", "never-submitted"):
        rt.redis.xadd(stream, {"request": json.dumps({"action": "cancel", "job_id": target})})
    assert intake.read_once() == 2
    assert rt.redis.xlen(stream) == 0

    set_cli_env(monkeypatch, settings)
    assert main(["cancel", "done-1"]) == EXIT_OK
    assert main(["cancel", "never-submitted"]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "job done-1 had already finished (completed); nothing to cancel" in out
    assert "no job never-submitted is known" in out

    events = list(client.results())
    assert [(e["job_id"], e["status"]) for e in events] == [("done-1", "completed")]
    assert client.status("done-1")["status"] == "completed"  # type: ignore[index]
    assert client.status("never-submitted") is None
    wait_for(lambda: drained(rt), what="queue drained")
    assert route_count(sim, "cancel-agent 200") + route_count(sim, "cancel-agent 400") == 0


# -- deadlines ----------------------------------------------------------------------------------------------------

#: A slow schedule: the first poll at 0.5 s, the next one 5 s later unless the deadline comes first.
SLOW_POLLS = {"cekura_poll_initial_s": 0.5, "cekura_poll_factor": 10.0, "cekura_poll_max_s": 5.0}


@pytest.mark.parametrize("settings", [SLOW_POLLS], indirect=True)
def test_a_deadline_expiring_mid_poll_times_the_job_out_once_with_no_later_cekura_call(
    client: Client, worker: dramatiq.Worker, sim: SimulatorHandle, rt: Runtime
) -> None:
    # The first poll (0.5 s) comes well before the deadline (3 s), the next one would come 5 s after it.
    job_id = client.submit("agent.auto_fetch", {"agent_id": 777}, job_id="deadline-1", deadline_s=3)
    event = client.wait(job_id, timeout=15)
    assert event["status"] == "timed_out"
    assert event["error"] == "deadline of 3s passed before Cekura reported a terminal status"
    assert event["cekura_status"] in ("queued", "in_progress")
    (progress_id,) = sim.polls()
    assert event["progress_id"] == progress_id
    submitted, finished = iso(event["submitted_at"]), iso(event["finished_at"])
    # not before the deadline
    assert (finished - submitted).total_seconds() >= 3.0
    # and at it rather than at the next scheduled poll (5 s after the first): the poll after the first one was
    # scheduled for the deadline (both on the Redis server's clock, so a slow machine changes neither)
    record = rt.redis.hmget(rt.store.job_key(job_id), "next_poll_ms", "deadline_ms")
    next_poll_ms, deadline_ms = (int(value or 0) for value in record)
    assert 0 < next_poll_ms <= deadline_ms, (next_poll_ms, deadline_ms)
    wait_for(settled(rt, job_id), what="every message about the job to be handled")
    times = poll_times(sim, progress_id)
    assert event["polls"] == str(len(times)) == "1"
    assert all(t <= finished.timestamp() for t in times)
    assert route_count(sim, "auto-fetch 202") == 1
    assert len(events_for(client, job_id)) == 1


# -- progress events ----------------------------------------------------------------------------------------------

PROGRESS_ON = {"cekura_progress_events": True, "cekura_poll_initial_s": 0.05, "cekura_poll_max_s": 0.1}


@pytest.fixture
def slow_sim(sim: SimulatorHandle) -> Iterator[SimulatorHandle]:
    """Simulated jobs that finish on their 12th poll, so an auto-fetch walks visibly through its stages however fast
    or slow the worker polls (a stage per poll or so, not per tenth of a second)."""
    sim.configure(polls_to_complete=12)
    yield sim
    sim.configure(polls_to_complete=None)


def _progress(rt: Runtime, job_id: str) -> list[dict[str, str]]:
    out = []
    for _, fields in rt.redis.xrange(rt.settings.cekura_progress_stream):
        entry = {k.decode(): v.decode() for k, v in fields.items()}
        if entry["job_id"] == job_id:
            out.append(entry)
    return out


@pytest.mark.parametrize("settings", [PROGRESS_ON], indirect=True)
def test_progress_events_follow_an_auto_fetch_through_its_stages(
    client: Client, worker: dramatiq.Worker, slow_sim: SimulatorHandle, rt: Runtime
) -> None:
    job_id = client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="stages-1")
    event = client.wait(job_id, timeout=15)
    assert event["status"] == "completed"
    entries = _progress(rt, job_id)
    stages = [e["current_stage"] for e in entries]
    assert len(set(stages)) >= 3, entries
    indices = [STAGES.index(stage) for stage in stages]
    assert indices == sorted(indices), stages  # in order
    pairs = [(e["cekura_status"], e["current_stage"]) for e in entries]
    assert all(a != b for a, b in itertools.pairwise(pairs)), pairs  # one event per change
    assert {e["cekura_status"] for e in entries} <= {"queued", "in_progress"}
    polls = [int(e["polls"]) for e in entries]
    assert polls == sorted(polls) and len(set(polls)) == len(polls)
    assert all(e["kind"] == "agent.auto_fetch" and e["progress_id"] == event["progress_id"] for e in entries)
    assert int(event["polls"]) > len(entries)  # unchanged polls publish nothing


def test_progress_events_are_off_by_default(
    client: Client, worker: dramatiq.Worker, rt: Runtime, sim: SimulatorHandle
) -> None:
    assert rt.settings.cekura_progress_events is False
    sim.configure(polls_to_complete=2)  # the first poll is not terminal, however late it comes
    job_id = client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="stages-off")
    assert client.wait(job_id, timeout=15)["status"] == "completed"
    # a non-terminal poll ran (with events on it would have published its first status), yet nothing was published
    assert int(client.wait(job_id)["polls"]) >= 2
    assert rt.redis.exists(rt.settings.cekura_progress_stream) == 0
