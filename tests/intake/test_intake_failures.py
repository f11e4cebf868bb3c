"""The request stream when handling an entry fails: an entry Redis keeps refusing is skipped, then rejected after its
tries, without holding up the entries behind it; a start message that can't be sent after the job was recorded is
left to the reconciler, never turned into a rejection; a lost connection is retried, never a rejection either."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import dramatiq
import pytest
import redis

from actors import names
from tests.support import wait_for
from worker.client import Client
from worker.intake.stream import DEFAULT_MAX_ENTRY_TRIES, Intake
from worker.runtime.app import Runtime
from worker.runtime.reconciler import reconcile_once

#: How soon an entry read in the same batch as a failing one must be handled (it takes milliseconds): well inside
#: the 1 s the intake waits after a failed batch, which is how long it took when a failure stopped the batch.
PROMPT_S = 0.5


def _xadd(rt: Runtime, request: Any) -> str:
    payload = json.dumps(request)
    return rt.redis.xadd(rt.settings.cekura_requests_stream, {"request": payload}).decode()  # type: ignore[no-any-return]


def _intake(rt: Runtime, name: str = "test-consumer", **kwargs: Any) -> Intake:
    intake = Intake(rt, name=name, **kwargs)
    intake.ensure_group()
    return intake


def _events(client: Client) -> list[dict[str, str]]:
    return list(client.results())


def _pending(rt: Runtime) -> int:
    return int(rt.redis.xpending(rt.settings.cekura_requests_stream, rt.settings.cekura_intake_group)["pending"])


def _logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The structlog event dicts named `event` that reached stdlib logging during the test."""
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == event]


def _auto_fetch(job_id: str) -> dict[str, Any]:
    return {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": job_id}


def test_an_entry_redis_keeps_refusing_is_skipped_then_rejected_after_its_tries(
    rt: Runtime, client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Recording this one job fails with a genuine Redis error reply (WRONGTYPE: its command reads a string as a
    # hash), the same on every delivery, like a script error would.
    not_a_hash = rt.settings.key("not-a-hash")
    rt.redis.set(not_a_hash, "another program's string")
    record = rt.store.submit

    def submit(job_id: str, *args: Any, **kwargs: Any) -> tuple[bool, str]:
        if job_id == "poison-1":
            rt.redis.hget(not_a_hash, "state")
        return record(job_id, *args, **kwargs)

    monkeypatch.setattr(rt.store, "submit", submit)
    intake = Intake(rt, name="poison-test", claim_idle_ms=200)
    intake.start()
    try:
        poison = _xadd(rt, _auto_fetch("poison-1"))
        _xadd(rt, _auto_fetch("behind-poison"))
        wait_for(lambda: rt.store.get("behind-poison"), PROMPT_S, "the entry behind the failing one to be recorded")
        event = wait_for(
            lambda: next((e for e in _events(client) if e["status"] == "rejected"), None),
            10,
            "the failing entry to be rejected after its tries",
        )
        wait_for(lambda: _pending(rt) == 0, 5, "the rejected entry to be acknowledged")
    finally:
        intake.stop()
        intake.join(timeout=10)
    assert event["job_id"] == ""
    assert event["requested_job_id"] == "poison-1"
    assert event["kind"] == "agent.auto_fetch"
    assert event["request_id"] == poison
    tries = DEFAULT_MAX_ENTRY_TRIES
    expected = rf"request could not be recorded after {tries} tries: WRONGTYPE .+ \(request entry {poison}\)"
    assert re.fullmatch(expected, event["error"]), event["error"]
    assert [e["status"] for e in _events(client)] == ["rejected"]  # once, and nothing else
    assert rt.store.get("poison-1") is None
    assert rt.redis.xlen(rt.settings.cekura_requests_stream) == 0
    assert [e["tries"] for e in _logged(caplog, "intake_entry_redis_error")] == list(range(1, tries))


def _refuse_rejections(rt: Runtime) -> Intake:
    """A real condition, no patching: another program's string sits where the results stream should be, so a bad
    request's rejection fails with WRONGTYPE, while recording a good request needs no results stream."""
    rt.redis.set(rt.settings.cekura_results_stream, "another program's string")
    intake = Intake(rt, name="refused-rejection", claim_idle_ms=200)
    intake.start()
    return intake


def test_an_entry_whose_rejection_redis_refuses_does_not_hold_up_the_entries_behind_it(rt: Runtime) -> None:
    intake = _refuse_rejections(rt)
    try:
        _xadd(rt, {"kind": "agent.nope", "params": {}, "job_id": "bad-first"})
        _xadd(rt, _auto_fetch("good-second"))
        wait_for(lambda: rt.store.get("good-second"), PROMPT_S, "the good entry behind the bad one to be recorded")
    finally:
        intake.stop()
        intake.join(timeout=10)
    assert intake.is_alive() is False


def test_an_entry_whose_rejection_redis_refused_is_rejected_once_the_stray_key_is_gone(
    rt: Runtime, client: Client
) -> None:
    intake = _refuse_rejections(rt)
    try:
        bad = _xadd(rt, {"kind": "agent.nope", "params": {}, "job_id": "bad-first"})
        _xadd(rt, _auto_fetch("good-second"))
        wait_for(lambda: rt.store.get("good-second"), PROMPT_S, "the good entry behind the bad one to be recorded")
        time.sleep(1.0)  # delivered again and again meanwhile: it can't be rejected, so it stays pending, not lost
        assert _pending(rt) == 1
        rt.redis.delete(rt.settings.cekura_results_stream)  # the operator removes the stray key
        event = wait_for(
            lambda: next((e for e in _events(client) if e["status"] == "rejected"), None),
            10,
            "the bad entry to be rejected once its rejection can be published",
        )
        wait_for(lambda: _pending(rt) == 0, 5, "the bad entry to be acknowledged")
    finally:
        intake.stop()
        intake.join(timeout=10)
    assert event["request_id"] == bad
    assert event["requested_job_id"] == "bad-first"
    # Normally its own reason; if the key went away between a failed try and its last-resort rejection, that one.
    reasons = r"unknown kind 'agent\.nope'; .+|request could not be recorded after \d+ tries: WRONGTYPE .+"
    assert re.fullmatch(rf"({reasons}) \(request entry {bad}\)", event["error"]), event["error"]


def _start_messages(rt: Runtime) -> list[list[Any]]:
    """The args of every start message waiting in the Cekura queue (no worker runs in these tests)."""
    queue = f"{rt.broker.namespace}:{rt.settings.cekura_queue}"
    messages = [json.loads(rt.redis.hget(f"{queue}.msgs", message_id)) for message_id in rt.redis.lrange(queue, 0, -1)]
    return [m["args"] for m in messages if m["actor_name"] == names.START]


def test_a_start_message_that_cannot_be_sent_after_recording_is_left_to_the_reconciler(
    rt: Runtime, client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_enqueue(message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        raise RuntimeError("a bug in the broker")

    monkeypatch.setattr(rt.broker, "enqueue", broken_enqueue)
    _xadd(rt, _auto_fetch("start-lost"))
    assert _intake(rt).read_once() == 1
    # The job exists and will run: no rejection, and the entry is done with.
    assert _events(client) == []
    assert (rt.store.get("start-lost") or {}).get("state") == "queued"
    assert _pending(rt) == 0
    assert rt.redis.xlen(rt.settings.cekura_requests_stream) == 0
    [failed] = _logged(caplog, "start_enqueue_failed")
    assert failed["job_id"] == "start-lost"
    assert not _logged(caplog, "intake_entry_failed")
    assert _start_messages(rt) == []
    monkeypatch.undo()
    # Once overdue (CEKURA_RECONCILE_GRACE_S), the reconciler sends the start the broker failed to.
    wait_for(lambda: reconcile_once(rt), 10, "the reconciler to re-send the start")
    assert _start_messages(rt) == [["start-lost"]]
    assert _events(client) == []


def test_a_lost_connection_while_sending_the_start_leaves_the_entry_pending_for_a_retry(
    rt: Runtime, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(rt.broker, "enqueue", unreachable)
    _xadd(rt, _auto_fetch("start-retried"))
    intake = _intake(rt, claim_idle_ms=50)
    with pytest.raises(redis.ConnectionError):
        intake.read_once()
    assert _pending(rt) == 1  # not acknowledged: handled again
    assert (rt.store.get("start-retried") or {}).get("state") == "queued"
    assert _events(client) == []
    monkeypatch.undo()
    time.sleep(0.1)
    assert intake.claim_abandoned() == 1  # the retry finds the job recorded and sends its start
    assert _pending(rt) == 0
    assert _start_messages(rt) == [["start-retried"]]
    assert _events(client) == []
