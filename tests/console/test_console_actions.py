"""Cancel, retry and answer through the console: each goes through the functions behind the CLI, and the page says
what happened, including when nothing could be done."""

from __future__ import annotations

import re

import pytest

from tests.console.consoles import Served
from tests.console.jobs import HOSTILE_SCRIPT, finish, make_job, progress
from worker.client import Client
from worker.errors import InvalidRequest
from worker.store.jobs import JobStore


def test_cancelling_an_active_job_ends_it_cancelled_with_its_one_event(console: Served, store: JobStore) -> None:
    make_job(store, "queued")
    confirm = console.get("/actions/cancel?job=queued").text
    assert 'Cancel job <bdi id="job-id">queued</bdi>?' in confirm and "Yes, cancel the job" in confirm
    done = console.act("cancel", "queued")
    assert done.status_code == 200
    assert 'id="outcome">job queued cancelled<' in done.text
    record = store.get("queued")
    assert record is not None and record["status"] == "cancelled" and record["state"] == "finished"
    events = store.client.xrange(console.settings.cekura_results_stream)
    assert [fields[b"status"] for _, fields in events] == [b"cancelled"]

    again = console.act("cancel", "queued")
    assert again.status_code == 409
    assert "had already finished (cancelled); nothing to cancel" in again.text
    unknown = console.act("cancel", "never-was")
    assert unknown.status_code == 409 and "no job never-was is known" in unknown.text
    invalid = console.act("cancel", HOSTILE_SCRIPT)
    assert invalid.status_code == 409
    assert "job_id must be 1-128 characters" in invalid.text and HOSTILE_SCRIPT not in invalid.text


def test_retrying_a_finished_job_submits_it_again_as_the_cli_does(console: Served, store: JobStore) -> None:
    make_job(store, "flaky", params={"agent_id": 901}, metadata={"ticket": "T-1"})
    finish(store, "flaky", "failed", error="Simulated provider failure")
    page = console.get("/jobs/flaky").text
    assert 'href="/actions/retry?job=flaky"' in page
    assert (
        'The new job will be <bdi id="new-job-id">flaky-retry-1</bdi>' in console.get("/actions/retry?job=flaky").text
    )
    done = console.act("retry", "flaky")
    assert (done.status_code, done.headers["location"]) == (303, "/jobs/flaky-retry-1")
    retried = store.get("flaky-retry-1")
    assert retried is not None and retried["state"] == "queued"
    assert '"retry_of":"flaky"' in retried["metadata"]
    assert "flaky-retry-1" in console.get("/jobs/flaky").text  # the original's page links to its retry
    assert "a retry of job flaky" in console.get("/jobs/flaky-retry-1").text

    active = console.act("retry", "flaky-retry-1")
    assert active.status_code == 409
    assert "is still queued: retry it once it has finished" in active.text


def test_a_job_whose_kind_takes_secrets_offers_no_retry(console: Served, store: JobStore) -> None:
    make_job(store, "toggle", kind="agent.toggle_mock_tools", params={"agent_id": 6, "enabled": True})
    finish(store, "toggle", "completed")
    page = console.get("/jobs/toggle").text
    assert "Retry&hellip;" not in page and "secret params, which are never stored" in page
    refused = console.act("retry", "toggle")
    assert refused.status_code == 409 and "can&#39;t be retried" in refused.text


def test_an_answer_is_offered_only_for_a_waiting_job_and_goes_through_the_client(
    console: Served, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    answered: list[tuple[str, str]] = []

    def answer(self: Client, job_id: str, text: str) -> None:
        record = store.get(job_id)
        if record is None or record["state"] != "waiting":
            raise InvalidRequest(f"job {job_id} is not waiting for an answer")
        answered.append((job_id, text))

    monkeypatch.setattr(Client, "answer", answer, raising=False)
    make_job(store, "asks")
    question = f"Which persona? {HOSTILE_SCRIPT}"
    progress(store.client, console.settings, "asks", "needs_clarification", question=question)
    make_job(store, "busy")

    page = console.get("/jobs/asks").text
    assert 'href="/actions/answer?job=asks"' in page
    assert "Which persona? &lt;script&gt;" in page
    waiting = r"<td>waiting</td><td>Cekura status needs_clarification \(poll 1\); asks: Which persona\? &lt;script"
    assert re.search(waiting, page)
    assert "/actions/answer" not in console.get("/jobs/busy").text
    confirm = console.get("/actions/answer?job=asks").text
    assert re.search(r'<q id="question">Which persona\? &lt;script&gt;', confirm)
    assert '<textarea name="answer"' in confirm

    done = console.act("answer", "asks", answer="The frustrated caller")
    assert done.status_code == 200 and "Answer recorded for job asks" in done.text
    assert answered == [("asks", "The frustrated caller")]
    refused = console.act("answer", "busy", answer="hello")
    assert refused.status_code == 409 and "job busy is not waiting for an answer" in refused.text
    empty = console.act("answer", "asks", answer="   ")
    assert empty.status_code == 409 and "The answer is empty" in empty.text
    assert answered == [("asks", "The frustrated caller")]


def test_without_an_answer_operation_the_console_offers_none(
    console: Served, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(Client, "answer", raising=False)
    make_job(store, "asks")
    store.client.hset(store.job_key("asks"), mapping={"state": "waiting", "question": "Which persona?"})
    assert "/actions/answer" not in console.get("/jobs/asks").text
    assert console.get("/actions/answer?job=asks").status_code == 404
    refused = console.act("cancel", "asks")  # cancelling a waiting job still works
    assert refused.status_code == 200
