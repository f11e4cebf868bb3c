"""The console's read-only pages over real HTTP against a real Redis: what they show, and that every value from a
job, a request or Cekura is shown as text, however hostile."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from html.parser import HTMLParser
from urllib.parse import quote

from markupsafe import escape

from tests.console.consoles import Served
from tests.console.jobs import (
    HOSTILE_ATTRIBUTE,
    HOSTILE_JOB_ID,
    HOSTILE_QUOTE,
    HOSTILE_SCRIPT,
    HOSTILES,
    finish,
    make_job,
    progress,
    reject,
)
from worker.store.jobs import JobStore


def _assert_shown_as_text(html: str, value: str) -> None:
    assert str(escape(value)) in html, f"{value!r} is not on the page as text"
    assert value not in html, f"{value!r} is on the page unescaped"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _no_markup_from_data(html: str) -> None:
    """The page holds only the console's own markup: one external script, no inline handler, no injected tag."""
    parser = _Tags()
    parser.feed(html)
    assert [attrs for tag, attrs in parser.tags if tag == "script"] == [{"src": "/static/console.js", "defer": None}]
    assert not {tag for tag, _ in parser.tags} & {"img", "svg", "iframe", "object", "embed", "style", "base"}
    handlers = [(tag, name) for tag, attrs in parser.tags for name in attrs if name.startswith("on")]
    assert not handlers, f"inline event handlers on the page: {handlers}"
    assert not [tag for tag, attrs in parser.tags if "style" in attrs]  # the policy allows no inline style either


def test_hostile_job_id_metadata_and_cekura_answer_are_shown_as_text(console: Served, store: JobStore) -> None:
    metadata = {"note": HOSTILE_SCRIPT, HOSTILE_ATTRIBUTE: HOSTILE_QUOTE}
    make_job(store, "friendly", metadata=metadata)
    finish(store, "friendly", "needs_input", result={"result": {"response": HOSTILE_SCRIPT}}, error=HOSTILE_ATTRIBUTE)
    make_job(store, HOSTILE_JOB_ID, params={"agent_id": 5, "note": HOSTILE_QUOTE})
    progress(store.client, console.settings, HOSTILE_JOB_ID, HOSTILE_ATTRIBUTE, stage=HOSTILE_SCRIPT)
    make_job(store, HOSTILE_JOB_ID + "-done")
    finish(store, HOSTILE_JOB_ID + "-done", "failed", error=HOSTILE_SCRIPT, cekura_status=HOSTILE_QUOTE)
    reject(store, "1-0", f"unknown kind {HOSTILE_SCRIPT!r}", kind=HOSTILE_ATTRIBUTE)

    jobs = console.get("/jobs").text
    for value in (HOSTILE_JOB_ID, HOSTILE_ATTRIBUTE, HOSTILE_SCRIPT):
        _assert_shown_as_text(jobs, value)
    assert f'href="/jobs/{quote(HOSTILE_JOB_ID, safe="")}"' in jobs  # a link is percent-encoded, then escaped
    _no_markup_from_data(jobs)

    for job_id in ("friendly", HOSTILE_JOB_ID, HOSTILE_JOB_ID + "-done"):
        page = console.get(f"/jobs/{quote(job_id, safe='')}")
        assert page.status_code == 200
        _no_markup_from_data(page.text)
        for value in HOSTILES:
            assert value not in page.text
    friendly = console.get("/jobs/friendly").text
    _assert_shown_as_text(friendly, HOSTILE_SCRIPT)  # the metadata, and Cekura's answer in the payload
    hostile = console.get(f"/jobs/{quote(HOSTILE_JOB_ID, safe='')}").text
    _assert_shown_as_text(hostile, HOSTILE_JOB_ID)
    assert f'data-events="/events?job={quote(HOSTILE_JOB_ID, safe="")}"' in hostile
    _no_markup_from_data(console.get("/").text)

    # A job id in a query string is data too: the confirmation page shows it as text and posts it back as it was.
    confirm = console.get("/actions/cancel", params={"job": HOSTILE_ATTRIBUTE}).text
    _assert_shown_as_text(confirm, HOSTILE_ATTRIBUTE)
    _no_markup_from_data(confirm)


def test_the_overview_shows_the_status_figures_and_the_last_hours_outcomes(console: Served, store: JobStore) -> None:
    for n in range(3):
        make_job(store, f"queued-{n}")
    make_job(store, "scenario", kind="scenario.agent", params={"user_message": "hi"})
    for job_id, status in (("done-1", "completed"), ("done-2", "completed"), ("bad", "failed")):
        make_job(store, job_id)
        finish(store, job_id, status)
    reject(store, "5-0", "bad JSON")

    page = console.get("/").text
    assert re.search(r'data-figure="in_flight">4<', page)
    assert "<td>agent.auto_fetch</td><td>3</td><td>0</td><td>0</td><td>0</td><td>3</td>" in page  # queued ... waiting
    assert "<td>scenario.agent</td><td>1</td>" in page
    assert re.search(r'data-figure="workers_live">0<', page)
    assert re.search(r'data-figure="request_lag">n/a<', page)  # no worker has made the intake's group yet
    outcomes = page[page.index('data-table="outcomes"') :]
    # kind, completed, needs_input, failed, timed_out, cancelled, rejected, total
    assert "<td>agent.auto_fetch</td><td>2</td><td>0</td><td>1</td><td>0</td><td>0</td><td>0</td><td>3</td>" in outcomes
    assert "<td>(none)</td><td>0</td><td>0</td><td>0</td><td>0</td><td>0</td><td>1</td><td>1</td>" in outcomes
    assert 'data-events="/events"' in page


def test_the_jobs_page_filters_by_kind_status_and_prefix_newest_first_and_pages(
    console: Served, store: JobStore
) -> None:
    for n in range(60):
        make_job(store, f"old-{n:02d}")
        finish(store, f"old-{n:02d}", "completed" if n % 3 else "failed")
    make_job(store, "clean-1", kind="metric.clean_description", params={"agent": 1})
    finish(store, "clean-1", "completed")
    for n in range(3):
        make_job(store, f"active-{n}")
    make_job(store, "other-active", kind="scenario.agent", params={})

    page = console.get("/jobs").text
    results = page[page.index('id="results"') : page.index('id="rejected"')]
    shown = re.findall(r'data-job-id="([^"]+)"', results)
    assert shown[:3] == ["clean-1", "old-59", "old-58"]  # newest first
    assert len(shown) == 50
    older = re.search(r'href="/jobs\?before=([0-9-]+)">older results', page)
    assert older
    rest = console.get("/jobs", params={"before": older[1]}).text
    rest_results = re.findall(r'data-job-id="([^"]+)"', rest[rest.index('id="results"') :])
    assert rest_results[0] == "old-10" and rest_results[-1] == "old-00" and len(rest_results) == 11
    assert "older results" not in rest

    active = re.findall(r'data-job-id="([^"]+)"', page[page.index('id="active-jobs"') : page.index('id="results"')])
    assert active == ["other-active", "active-2", "active-1", "active-0"]

    failed = console.get("/jobs", params={"status": "failed"}).text
    failed_ids = re.findall(r'data-job-id="([^"]+)"', failed)
    assert failed_ids == [f"old-{n:02d}" for n in range(57, -1, -3)]
    assert "a job that is failed has finished: see the results" in failed

    by_kind = re.findall(r'data-job-id="([^"]+)"', console.get("/jobs?kind=metric.clean_description").text)
    assert by_kind == ["clean-1"]
    by_prefix = re.findall(r'data-job-id="([^"]+)"', console.get("/jobs?prefix=active-").text)
    assert by_prefix == ["active-2", "active-1", "active-0"]
    polling = console.get("/jobs?status=queued&kind=scenario.agent").text
    assert re.findall(r'data-job-id="([^"]+)"', polling) == ["other-active"]
    assert "has no result yet: see the active jobs" in polling


def test_rejected_requests_show_their_reason_and_their_entry(console: Served, store: JobStore) -> None:
    reject(
        store, "1700000000000-0", "params: agent_id: Input should be a valid integer", "refresh-42", "agent.auto_fetch"
    )
    reject(store, "1700000000001-0", "request is not valid JSON")
    page = console.get("/jobs").text
    rejected = page[page.index('id="rejected"') :]
    assert "<code>1700000000000-0</code>" in rejected
    assert "refresh-42" in rejected and "Input should be a valid integer" in rejected
    assert "request is not valid JSON (request entry 1700000000001-0)" in rejected
    only = console.get("/jobs", params={"status": "rejected", "prefix": "refresh"}).text
    assert "1700000000000-0" in only and "1700000000001-0" not in only


def test_a_jobs_page_shows_its_record_timeline_and_result(console: Served, store: JobStore) -> None:
    make_job(store, "fetch", params={"agent_id": 5}, metadata={"ticket": "OPS-7"}, deadline_s=90)
    store.client.hset(
        store.job_key("fetch"), mapping={"started_ms": store.client.hget(store.job_key("fetch"), "submitted_ms")}
    )
    progress(store.client, console.settings, "fetch", "in_progress", "validate", polls=1)
    progress(store.client, console.settings, "other", "in_progress", "kb", polls=1)  # another job's event
    progress(store.client, console.settings, "fetch", "in_progress", "prompt", polls=2)
    running = console.get("/jobs/fetch").text
    assert re.search(r'id="job-stage">prompt<', running)
    assert re.search(r'id="job-state">polling<', running)
    assert "Cancel&hellip;" in running and "Retry&hellip;" not in running
    assert "&#34;ticket&#34;: &#34;OPS-7&#34;" in running  # pretty JSON, escaped
    finish(store, "fetch", "completed", result={"status": "completed", "stages": ["validate", "prompt"]}, polls=4)

    page = console.get("/jobs/fetch").text
    timeline = page[page.index('id="timeline"') :]
    whats = re.findall(r"<tr><td>[^<]*</td><td>(\w+)</td>", timeline)
    assert whats == ["submitted", "started", "progress", "progress", "finished"]
    assert "stage validate (poll 1)" in timeline and "stage prompt (poll 2)" in timeline and "stage kb" not in timeline
    assert "kind agent.auto_fetch, deadline 90 s" in timeline
    assert re.search(r'id="result-status">completed<', page)
    assert re.search(r"<code>\d+-\d+</code> on the results stream", page)
    assert "&#34;stages&#34;: [\n    &#34;validate&#34;," in page  # the payload, indented
    assert "Retry&hellip;" in page and "Cancel&hellip;" not in page
    assert 'id="no-progress"' not in page
    make_job(store, "quiet")
    finish(store, "quiet", "completed", polls=2)
    assert "publish them only with CEKURA_PROGRESS_EVENTS=true" in console.get("/jobs/quiet").text


def test_an_evaluator_runs_page_lists_each_runs_verdict(console: Served, store: JobStore) -> None:
    runs_by_id = {
        "11": {"scenario": 7, "scenario_name": "Refund", "status": "completed", "success": True, "error_message": ""},
        "12": {"scenario": 8, "scenario_name": HOSTILE_SCRIPT, "status": "failed", "success": False,
               "error_message": "caller hung up"},
    }  # fmt: skip
    make_job(store, "eval-1", kind="evaluator.run", params={"agent_id": 5})
    finish(store, "eval-1", "failed", result={"id": 99, "status": "completed", "runs": runs_by_id})
    make_job(store, "eval-2", kind="evaluator.run", params={"agent_id": 5})
    runs_list = [{"id": 21, "scenario": 9, "scenario_name": "Hours", "status": "running", "success": None}]
    finish(store, "eval-2", "timed_out", result={"runs": runs_list})

    page = console.get("/jobs/eval-1").text
    runs = page[page.index('id="runs"') : page.index("</table>", page.index('id="runs"'))]
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td><td[^>]*>(.*?)</td>", runs)
    assert rows == [
        ("11", "7", "Refund", "completed", "passed"),
        ("12", "8", str(escape(HOSTILE_SCRIPT)), "failed", "failed"),
    ]
    assert "caller hung up" in runs
    other = console.get("/jobs/eval-2").text
    assert re.findall(r"<tr><td>(21)</td><td>9</td><td>Hours</td><td>running</td><td[^>]*>-</td>", other)
    assert 'id="runs"' not in console.get("/").text


def test_an_unknown_or_unreadable_job_is_a_404_that_says_so(console: Served, store: JobStore) -> None:
    page = console.get("/jobs/never-was")
    assert page.status_code == 404
    assert "No job never-was is known" in page.text
    store.client.set(store.job_key("a-string"), "not a hash")
    assert console.get("/jobs/a-string").status_code == 404
    assert console.get("/jobs/" + "x" * 300).status_code == 404


def test_a_result_trimmed_from_the_stream_is_shown_from_the_record(console: Served, store: JobStore) -> None:
    make_job(store, "trimmed")
    finish(store, "trimmed", "completed", result={"answer": 42})
    store.client.delete(console.settings.cekura_results_stream)
    page = console.get("/jobs/trimmed").text
    assert "no longer in the results stream" in page
    assert "&#34;answer&#34;: 42" in page


def test_a_redis_failure_is_a_503_page_that_shows_no_password(serve: Callable[..., Served]) -> None:
    password = "redis-pass-" + "9" * 12
    served: Served = serve(redis_url=f"redis://:{password}@127.0.0.1:1/0")  # nothing listens on port 1
    page = served.get("/jobs")
    assert page.status_code == 503
    assert "Redis at redis://:***@127.0.0.1:1/0 failed" in page.text
    assert password not in page.text
    assert json.dumps(password)[1:-1] not in page.text
