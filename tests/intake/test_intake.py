"""The request stream: one consumer group for the fleet, entries handled once, acknowledged and deleted, bad ones
rejected once even when redelivered, duplicates collapsed, and a dead consumer's entries finished by another."""

from __future__ import annotations

import json
import time
from typing import Any

import dramatiq
import pytest

from simulator import SimulatorHandle
from tests.support import wait_for
from worker.client import Client
from worker.intake.stream import Intake
from worker.runtime.app import Runtime


def _xadd(rt: Runtime, request: Any) -> str:
    payload = request if isinstance(request, bytes) else json.dumps(request)
    return rt.redis.xadd(rt.settings.cekura_requests_stream, {"request": payload}).decode()  # type: ignore[no-any-return]


def _intake(rt: Runtime, name: str = "test-consumer", **kwargs: Any) -> Intake:
    intake = Intake(rt, name=name, **kwargs)
    intake.ensure_group()
    return intake


def _events(client: Client, job_id: str | None = None) -> list[dict[str, str]]:
    return [e for e in client.results() if job_id is None or e["job_id"] == job_id]


def _pending(rt: Runtime) -> int:
    return int(rt.redis.xpending(rt.settings.cekura_requests_stream, rt.settings.cekura_intake_group)["pending"])


def _start_calls(sim: SimulatorHandle) -> int:
    return int(sim.stats()["started_jobs"])


# -- bad entries ----------------------------------------------------------------------------------------------------


def test_a_redelivered_bad_entry_publishes_its_rejection_once(rt: Runtime, client: Client) -> None:
    intake = _intake(rt)
    entry_id = _xadd(rt, {"kind": "agent.auto_fetch", "params": {"agent_id": "five"}, "job_id": "bad-twice"})
    raw = rt.redis.xrange(rt.settings.cekura_requests_stream)[0][1]
    assert intake.read_once() == 1
    intake.handle(entry_id.encode(), raw)  # delivered again, as after a crash before the ack
    _intake(rt, name="another-consumer").handle(entry_id.encode(), raw)  # or to another consumer
    events = _events(client)
    assert len(events) == 1
    assert events[0]["status"] == "rejected"
    assert events[0]["job_id"] == ""
    assert events[0]["requested_job_id"] == "bad-twice"
    assert events[0]["error"].endswith(f"(request entry {entry_id})")
    assert rt.store.get("bad-twice") is None


def test_a_rejection_masks_the_requests_own_secret_params(rt: Runtime, client: Client) -> None:
    key, token = "sk-own-provider-key-0451", "mcp-own-token-7718"
    headers = {"Authorization": f"Bearer {token}"}
    _xadd(rt, {"kind": key, "params": {"api_key": key}, "job_id": "own-1"})  # an unknown kind: the key itself
    _xadd(rt, {"action": f"stop {token}", "job_id": "own-2", "params": {"mcp_server_headers": headers}})
    assert _intake(rt).read_once() == 2
    events = _events(client)
    assert [e["status"] for e in events] == ["rejected", "rejected"]
    assert "***" in events[0]["error"] and "***" in events[1]["error"]
    assert key not in json.dumps(events) and token not in json.dumps(events)


def test_a_redelivered_entry_with_a_job_id_makes_one_job(rt: Runtime) -> None:
    intake = _intake(rt)
    entry_id = _xadd(rt, {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": "redelivered"})
    raw = rt.redis.xrange(rt.settings.cekura_requests_stream)[0][1]
    assert intake.read_once() == 1
    intake.handle(entry_id.encode(), raw)  # a crash between recording the job and the ack redelivers the entry
    assert rt.redis.keys(rt.store.job_prefix + "*") == [rt.store.job_key("redelivered").encode()]


def test_a_redelivered_entry_without_a_job_id_makes_one_job(rt: Runtime) -> None:
    intake = _intake(rt)
    entry_id = _xadd(rt, {"kind": "agent.auto_fetch", "params": {"agent_id": 5}})
    raw = rt.redis.xrange(rt.settings.cekura_requests_stream)[0][1]
    assert intake.read_once() == 1
    intake.handle(entry_id.encode(), raw)  # a crash between recording the job and the ack redelivers the entry
    assert len(rt.redis.keys(rt.store.job_prefix + "*")) == 1


def test_the_same_bad_request_in_two_entries_is_rejected_twice(rt: Runtime, client: Client) -> None:
    # the once-only marker is per stream entry, not per request text: two submissions get two answers
    request = {"kind": "agent.auto_fetch", "params": {}}
    ids = [_xadd(rt, request), _xadd(rt, request)]
    assert _intake(rt).read_once() == 2
    assert sorted(e["request_id"] for e in _events(client)) == sorted(ids)


def test_rejected_requests_naming_a_live_job_add_no_event_under_its_id(
    rt: Runtime, worker: dramatiq.Worker, client: Client
) -> None:
    # A rejected request never became a job: its event says which job it asked for, but is not that job's event.
    client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="order-77")
    bad_ids = [
        _xadd(rt, {"kind": "agent.auto_fetch", "params": {"agent_id": "five"}, "job_id": "order-77"}),
        _xadd(rt, {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": "order-77", "priority": 1}),
    ]
    assert _intake(rt).read_once() == 2
    assert client.wait("order-77", timeout=15)["status"] == "completed"
    events = _events(client)
    assert [(e["status"], e["job_id"]) for e in events if e["job_id"] == "order-77"] == [("completed", "order-77")]
    rejected = [e for e in events if e["status"] == "rejected"]
    assert [(e["job_id"], e["requested_job_id"], e["request_id"]) for e in rejected] == [
        ("", "order-77", entry_id) for entry_id in bad_ids
    ]
    assert len(events) == 3


# -- duplicates -----------------------------------------------------------------------------------------------------


def test_two_identical_stream_requests_make_one_job_and_one_start_call(
    rt: Runtime, worker: dramatiq.Worker, client: Client, sim: SimulatorHandle
) -> None:
    request = {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": "dup-stream", "metadata": {"n": 1}}
    _xadd(rt, request)
    _xadd(rt, request)
    assert _intake(rt).read_once() == 2
    assert client.wait("dup-stream", timeout=15)["status"] == "completed"
    _xadd(rt, request)  # and once more after it finished
    assert _intake(rt).read_once() == 1
    time.sleep(0.3)
    assert _start_calls(sim) == 1
    assert sim.stats()["by_route"].get("auto-fetch 202") == 1
    assert [e["status"] for e in _events(client, "dup-stream")] == ["completed"]
    assert rt.redis.xlen(rt.settings.cekura_requests_stream) == 0


def test_a_client_and_a_stream_submission_with_the_same_job_id_make_one_job(
    rt: Runtime, worker: dramatiq.Worker, client: Client, sim: SimulatorHandle
) -> None:
    client.submit("scenario.agent", {"user_message": "from the client"}, job_id="dup-mixed")
    _xadd(rt, {"kind": "scenario.agent", "params": {"user_message": "from the client"}, "job_id": "dup-mixed"})
    assert _intake(rt).read_once() == 1
    event = client.wait("dup-mixed", timeout=15)
    assert event["status"] == "completed"
    time.sleep(0.3)
    assert sim.stats()["by_route"].get("scenario-agent 200") == 1
    assert _start_calls(sim) == 1
    assert len(_events(client, "dup-mixed")) == 1


# -- acknowledgement, deletion and abandoned entries ----------------------------------------------------------------


def test_entries_added_before_the_group_exists_are_handled_and_do_not_pile_up(
    rt: Runtime, worker: dramatiq.Worker, client: Client
) -> None:
    stream = rt.settings.cekura_requests_stream
    job_ids = [f"early-{i}" for i in range(8)]
    for job_id in job_ids:
        _xadd(rt, {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": job_id})
    intake = _intake(rt)
    intake.ensure_group()  # a second worker starting up finds the group there
    assert intake.read_once() == len(job_ids)
    assert intake.read_once() == 0
    assert rt.redis.xlen(stream) == 0
    assert _pending(rt) == 0
    for job_id in job_ids:
        assert client.wait(job_id, timeout=15)["status"] == "completed"
    assert sorted(e["job_id"] for e in _events(client)) == sorted(job_ids)


def test_entries_left_pending_by_a_dead_consumer_are_completed_by_another(
    rt: Runtime, worker: dramatiq.Worker, client: Client, sim: SimulatorHandle
) -> None:
    stream, group = rt.settings.cekura_requests_stream, rt.settings.cekura_intake_group
    _intake(rt)  # creates the group
    job_ids = ["orphan-1", "orphan-2", "orphan-3"]
    for job_id in job_ids:
        _xadd(rt, {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": job_id})
    _xadd(rt, {"kind": "agent.nope", "params": {}, "job_id": "orphan-bad"})
    # consumer A reads them, then dies before handling or acknowledging anything
    read = rt.redis.xreadgroup(group, "A", {stream: ">"}, count=10)
    assert len(read[0][1]) == 4
    assert _pending(rt) == 4
    assert rt.store.get("orphan-1") is None

    b = _intake(rt, name="B", claim_idle_ms=500)
    assert b.claim_abandoned() == 0  # not idle long enough yet: A might still be working
    time.sleep(0.6)
    assert b.claim_abandoned() == 4
    assert _pending(rt) == 0
    assert rt.redis.xlen(stream) == 0
    for job_id in job_ids:
        assert client.wait(job_id, timeout=15)["status"] == "completed"
    events = _events(client)
    assert sorted(e["job_id"] for e in events if e["status"] == "completed") == job_ids
    assert [e["requested_job_id"] for e in events if e["status"] == "rejected"] == ["orphan-bad"]
    assert b.claim_abandoned() == 0
    assert _start_calls(sim) == 3


def test_an_abandoned_entry_deleted_meanwhile_is_acknowledged_and_skipped(rt: Runtime, client: Client) -> None:
    stream, group = rt.settings.cekura_requests_stream, rt.settings.cekura_intake_group
    _intake(rt)
    entry_id = _xadd(rt, {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": "gone-entry"})
    rt.redis.xreadgroup(group, "A", {stream: ">"}, count=10)
    rt.redis.xdel(stream, entry_id)
    b = _intake(rt, name="B", claim_idle_ms=50)
    time.sleep(0.1)
    assert b.claim_abandoned() == 0
    assert _pending(rt) == 0
    assert _events(client) == []
    assert rt.store.get("gone-entry") is None


def test_a_cancel_request_on_the_stream_for_a_queued_job_ends_it_before_any_cekura_call(
    rt: Runtime, client: Client, sim: SimulatorHandle, request: pytest.FixtureRequest
) -> None:
    # no worker yet: the job is still queued when the cancel arrives
    client.submit("scenario.agent", {"user_message": "never mind"}, job_id="cancel-queued")
    _xadd(rt, {"action": "cancel", "job_id": "cancel-queued"})
    assert _intake(rt).read_once() == 1
    assert [e["status"] for e in _events(client, "cancel-queued")] == ["cancelled"]
    assert rt.redis.xlen(rt.settings.cekura_requests_stream) == 0
    # now a worker takes the job's start message: it finds the job finished and calls nobody
    request.getfixturevalue("worker")
    queue = f"{rt.broker.namespace}:{rt.settings.cekura_queue}"
    wait_for(lambda: rt.redis.llen(queue) == 0, what="the start message to be taken")
    time.sleep(0.3)
    assert sim.stats()["requests_total"] == 0
    assert [e["status"] for e in _events(client, "cancel-queued")] == ["cancelled"]


def test_the_intake_thread_reads_until_stopped(rt: Runtime, worker: dramatiq.Worker, client: Client) -> None:
    intake = Intake(rt, name="threaded")
    intake.start()
    try:
        _xadd(rt, {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": "threaded-1"})
        wait_for(lambda: rt.store.get("threaded-1"), what="the intake thread to pick the entry up")
    finally:
        intake.stop()
        intake.join(timeout=10)
    assert not intake.is_alive()
    assert client.wait("threaded-1", timeout=15)["status"] == "completed"
    # once stopped it reads nothing more
    _xadd(rt, {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": "after-stop"})
    time.sleep(0.2)
    assert rt.store.get("after-stop") is None
    assert rt.redis.xlen(rt.settings.cekura_requests_stream) == 1


def test_consumers_of_departed_processes_leave_the_group(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    intake = Intake(rt, name="live")
    intake.ensure_group()
    stream, group = rt.settings.cekura_requests_stream, rt.settings.cekura_intake_group
    rt.redis.xgroup_createconsumer(stream, group, "live")
    rt.redis.xgroup_createconsumer(stream, group, "departed")
    _xadd(rt, {"kind": "agent.auto_fetch", "params": {"agent_id": 5}})
    rt.redis.xreadgroup(group, "holding", {stream: ">"})  # gone too, but still holds an entry
    assert intake.forget_departed() == 0  # nobody has been idle an hour yet
    monkeypatch.setattr("worker.intake.stream.DEFAULT_FORGET_IDLE_MS", -1)  # now everyone has
    assert intake.forget_departed() == 1
    names = sorted(c["name"].decode() for c in rt.redis.xinfo_consumers(stream, group))
    assert names == ["holding", "live"]
