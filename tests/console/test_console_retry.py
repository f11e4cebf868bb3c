"""Retry through the console, once per confirmation: the new job's id is fixed when the confirmation page is drawn,
so the same form posted again (a double click, a reload that posts it again) makes no second job; and a retry that
could start a second Cekura operation next to one that may still be running asks to be confirmed again, explicitly."""

from __future__ import annotations

import json

import httpx

from tests.console.consoles import TOKEN, Served, hidden_fields
from tests.console.jobs import finish, make_job
from worker.store.jobs import JobStore, as_text

#: Words the console must say before it starts a second operation next to one that may still run at Cekura.
MAY_STILL_RUN = "may still be running at Cekura"


def _retries(store: JobStore, job_id: str) -> list[str]:
    """The jobs made to retry `job_id`, by id."""
    found = []
    for key in store.client.scan_iter(match=store.job_key("*"), count=1000):
        metadata = json.loads(as_text(store.client.hget(key, "metadata") or b"{}") or "{}")
        if metadata.get("retry_of") == job_id:
            found.append(as_text(key).removeprefix(store.job_key("")))
    return sorted(found)


def _started(served: Served) -> list[str]:
    """The jobs that start messages waiting in the broker's queues are for (no worker runs in these tests). A job
    may have two: `submit` sends the start of a job still queued again, which its start's claim makes harmless."""
    client = served.handle.app.state.console.client
    started = []
    for key in client.redis.scan_iter(match=f"{client.broker.namespace}:*.msgs", count=1000):
        for raw in client.redis.hvals(key):
            message = json.loads(raw)
            if message["actor_name"] == "cekura.start":
                started.append(message["args"][0])
    return sorted(set(started))


def _confirm(served: Served, job_id: str) -> tuple[str, dict[str, str]]:
    """The retry confirmation page of `job_id`, and the form it offers, filled in as a person would."""
    page = served.get(f"/actions/retry?job={job_id}").text
    return page, {**hidden_fields(page), "token": TOKEN}


def test_a_retry_confirmation_posted_twice_makes_one_job_and_redirects_to_it(console: Served, store: JobStore) -> None:
    make_job(store, "gate", kind="evaluator.run", params={"agent_id": 5})
    finish(store, "gate", "cancelled")
    _, form = _confirm(console, "gate")
    first = console.http.post("/actions/retry", data=form)
    again = console.http.post("/actions/retry", data=form)  # a double click, or a reload that posts it again
    assert _retries(store, "gate") == ["gate-retry-1"]
    assert _started(console) == ["gate-retry-1"]
    for response in (first, again):
        assert (response.status_code, response.headers.get("location")) == (303, "/jobs/gate-retry-1")
    assert "gate-retry-1" in console.get("/jobs/gate-retry-1").text
    # A new confirmation page is a new retry, with a new job of its own.
    _, second = _confirm(console, "gate")
    assert console.http.post("/actions/retry", data=second).headers.get("location") == "/jobs/gate-retry-2"
    assert _retries(store, "gate") == ["gate-retry-1", "gate-retry-2"]


def test_a_retry_posted_with_a_new_job_id_the_console_did_not_draw_makes_no_job(
    console: Served, store: JobStore
) -> None:
    make_job(store, "gate", kind="evaluator.run", params={"agent_id": 5})
    finish(store, "gate", "cancelled")
    _, form = _confirm(console, "gate")
    for forged in ({**form, "new_job": "chosen-by-the-sender"}, {k: v for k, v in form.items() if k != "new_job"}):
        refused = console.http.post("/actions/retry", data=forged)
        assert refused.status_code in (403, 409)
    assert _retries(store, "gate") == [] and _started(console) == []


def test_retrying_a_start_whose_outcome_is_unknown_needs_a_second_explicit_confirmation(
    console: Served, store: JobStore
) -> None:
    make_job(store, "gate", kind="evaluator.run", params={"agent_id": 5})
    store.client.hset(store.job_key("gate"), "start_sent", "1")  # sent, and no answer ever recorded
    finish(store, "gate", "failed", error="the start call's outcome is unknown")
    page, form = _confirm(console, "gate")
    assert MAY_STILL_RUN in page and 'name="force"' in page
    unticked = console.http.post("/actions/retry", data=form)
    assert unticked.status_code == 409
    assert MAY_STILL_RUN in unticked.text and 'name="force"' in unticked.text  # asked again, with the box to tick
    assert _retries(store, "gate") == [] and _started(console) == []
    ticked = console.http.post("/actions/retry", data={**hidden_fields(unticked.text), "token": TOKEN, "force": "1"})
    assert (ticked.status_code, ticked.headers.get("location")) == (303, "/jobs/gate-retry-1")
    assert _retries(store, "gate") == ["gate-retry-1"] and _started(console) == ["gate-retry-1"]


def test_a_start_known_to_have_reached_cekura_or_safe_to_repeat_is_retried_without_the_warning(
    console: Served, store: JobStore
) -> None:
    make_job(store, "known", kind="evaluator.run", params={"agent_id": 5})
    store.client.hset(store.job_key("known"), mapping={"start_sent": "1", "progress_id": "r-1"})
    make_job(store, "repeatable", kind="agent.auto_fetch", params={"agent_id": 5})
    store.client.hset(store.job_key("repeatable"), "start_sent", "1")
    for job_id in ("known", "repeatable"):
        finish(store, job_id, "failed")
        page, form = _confirm(console, job_id)
        assert MAY_STILL_RUN not in page and 'name="force"' not in page
        done = console.http.post("/actions/retry", data=form)
        assert (done.status_code, done.headers.get("location")) == (303, f"/jobs/{job_id}-retry-1")


def test_a_refused_retry_says_why_on_the_page(console: Served, store: JobStore) -> None:
    make_job(store, "busy")
    refused = console.act("retry", "busy")
    assert isinstance(refused, httpx.Response) and refused.status_code == 409
    assert "is still queued: retry it once it has finished" in refused.text
