"""The webhook receiver (issue 21), as the real `cekura-worker webhooks` process, against a real worker, Redis and
the simulator: a webhook makes its evaluator run poll at once and the run ends only on what that poll reads; the
secret, forged, duplicated, late and unknown webhooks, other event types, oversized and malformed bodies, and a
Redis that is down.

Evaluator runs here poll every 60 s on their own, so a job that ends within seconds ended by its webhook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dramatiq
import pytest

from simulator import SimulatorHandle
from tests.conftest import make_settings
from tests.support import RedisServer, wait_for
from tests.webhooks.receivers import SECRET, ReceiverProcess, ended_at_cekura, polls_made, started_run
from worker.client import Client
from worker.runtime.app import Runtime, bind_actors, setup


def test_a_webhook_makes_its_run_poll_now_and_the_run_ends_on_what_the_poll_reads(
    running: tuple[Runtime, Client], receiver: ReceiverProcess, sim: SimulatorHandle
) -> None:
    _, client = running
    job_id, result_id = started_run(client)
    wait_for(lambda: ended_at_cekura(sim, result_id), 15, "the run to end at Cekura")
    assert polls_made(sim) == 0
    answer = receiver.completed(int(result_id))
    assert answer.status_code == 200 and answer.json()["outcome"] == "matched", answer.text
    event = client.wait(job_id, timeout=20)  # 60 s before its first poll otherwise
    assert event["status"] == "completed"
    assert polls_made(sim) == 1
    late = receiver.completed(int(result_id))  # duplicated, or late: the job has ended
    assert late.json() == {"outcome": "unmatched", "job_id": job_id, "verdict": "finished"}
    assert polls_made(sim) == 1


def test_a_forged_webhook_costs_one_poll_and_never_a_verdict(
    running: tuple[Runtime, Client], receiver: ReceiverProcess, sim: SimulatorHandle
) -> None:
    _, client = running
    job_id, result_id = started_run(client, name="forever [hang]")
    forged = receiver.post({"event_type": "result.completed", "data": {"id": int(result_id), "status": "completed"}})
    assert forged.json()["outcome"] == "matched"
    wait_for(lambda: polls_made(sim) == 1, 15, "the one poll the webhook caused")
    wait_for(lambda: client.status(job_id)["polls"] == 1, 15, "the poll to be recorded")
    assert client.status(job_id)["state"] == "polling"


def test_duplicated_webhooks_make_one_poll(
    running: tuple[Runtime, Client], receiver: ReceiverProcess, sim: SimulatorHandle
) -> None:
    rt, client = running
    job_id, result_id = started_run(client)
    wait_for(lambda: ended_at_cekura(sim, result_id), 15, "the run to end at Cekura")
    answers = [receiver.completed(int(result_id)).json()["outcome"] for _ in range(3)]
    assert answers[0] == "matched"
    assert client.wait(job_id, timeout=20)["status"] == "completed"
    from tests.support import pending_messages

    wait_for(lambda: pending_messages(rt.redis, rt.broker.namespace, rt.settings.cekura_queue, job_id) <= 1, 15)
    assert polls_made(sim) == 1  # the copies found the step taken (the one left is the 60 s safety-net poll)


@pytest.mark.parametrize(
    ("body", "status", "outcome"),
    [
        ({"event_type": "call_log.completed", "data": {"id": 5}}, 200, "ignored"),
        ({"event_type": "result.completed", "data": {}}, 400, "malformed"),
        ({"event_type": "result.completed", "data": {"id": "5; DROP"}}, 400, "malformed"),
        ({"event_type": "result.completed", "data": {"id": 987654}}, 200, "unmatched"),
        ([1, 2], 400, "malformed"),
    ],
)
def test_what_the_receiver_answers_and_does_to_other_bodies(
    running: tuple[Runtime, Client],
    receiver: ReceiverProcess,
    sim: SimulatorHandle,
    body: Any,
    status: int,
    outcome: str,
) -> None:
    answer = receiver.post(body)
    assert (answer.status_code, answer.json()["outcome"]) == (status, outcome), answer.text
    assert polls_made(sim) == 0


def test_a_wrong_or_missing_secret_is_refused_and_does_nothing(
    running: tuple[Runtime, Client], receiver: ReceiverProcess, sim: SimulatorHandle
) -> None:
    _, client = running
    job_id, result_id = started_run(client)
    wait_for(lambda: ended_at_cekura(sim, result_id), 15, "the run to end at Cekura")
    body = {"event_type": "result.completed", "data": {"id": int(result_id)}}
    for secret in (None, "", SECRET[:-1], SECRET + "x", SECRET.upper()):
        assert receiver.post(body, secret=secret).status_code == 401
    assert client.status(job_id)["state"] == "polling"
    assert polls_made(sim) == 0


def test_oversized_and_malformed_bodies(running: tuple[Runtime, Client], receiver: ReceiverProcess) -> None:
    assert receiver.post(None, raw=b"{not json").status_code == 400
    assert receiver.post(None, raw=b"[" * 100_000).status_code == 400
    big = b'{"event_type": "result.completed", "pad": "' + b"x" * 9_000_000 + b'"}'
    assert receiver.post(None, raw=big).status_code == 413


def test_with_redis_down_it_answers_503_so_cekura_delivers_again(
    sim: SimulatorHandle, tmp_path: Path, redis_client: Any
) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(dir=tmp_path / "redis")
    server.start()
    settings = make_settings(sim.url, redis_url=server.url)
    process = ReceiverProcess(settings, tmp_path)
    try:
        assert process.completed("42").json()["outcome"] == "unmatched"
        server.kill()
        down = process.completed("42")
        assert down.status_code == 503 and down.json()["outcome"] == "unavailable"
    finally:
        process.stop()
        server.stop()


def test_with_webhooks_on_a_run_whose_webhook_never_comes_ends_on_its_safety_net_poll(
    sim: SimulatorHandle, redis_client: Any
) -> None:
    """Evaluator runs would poll every 0.05 s here; with webhooks on they poll at most every safety-net interval,
    so a run of 0.3 s whose webhook is lost ends on the first safety-net poll, after one call."""
    sim.reset()
    sim.clear_faults()
    sim.configure(duration_s=0.3, polls_to_complete=None, rate_limit_rps=0)
    settings = make_settings(sim.url, cekura_webhooks=True, cekura_webhook_safety_net_s=1.5)
    rt = setup(settings)
    bind_actors()
    worker = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        with Client(settings, client=rt.redis, broker=rt.broker) as client:
            job_id = client.submit("evaluator.run", {"scenarios": [1], "name": "no webhook"})
            event = client.wait(job_id, timeout=30)
    finally:
        worker.stop(timeout=10_000)
    assert event["status"] == "completed"
    assert event["polls"] == "1"
    assert polls_made(sim) == 1
