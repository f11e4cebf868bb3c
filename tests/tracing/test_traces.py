"""A job's trace, end to end, as a real OTLP/HTTP receiver decodes it: the producer's span, the job span, its call
spans and the publish, one trace; the result event continues it; a long job's polls summed up; a retry linked to the
job it retries; no secret anywhere in a span."""

from __future__ import annotations

import json
from typing import Any

import dramatiq
import jsonschema
import pytest
import redis
from opentelemetry import propagate, trace

from simulator import SimulatorHandle
from tests.support import wait_for
from tests.tracing.conftest import Producer, Receiver, flush, wait_job
from tests.tracing.receiver import tree
from worker.client import Client
from worker.runtime.app import Runtime
from worker.schemas import build_schemas
from worker.tracing import DEFAULT_TRACED_POLLS, parse_traceparent

KIND = "metric.clean_description"
PARAMS = {"agent": 42, "metric_description": "did the agent greet the caller", "eval_type": "boolean"}


def _logged(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The structlog event dicts that reached stdlib logging during the test (context variables merged in)."""
    return [r.msg for r in caplog.records if isinstance(r.msg, dict)]


def _by_name(spans: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [span for span in spans if span["name"].startswith(prefix)]


def _one(spans: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    found = _by_name(spans, prefix)
    assert len(found) == 1, (prefix, [s["name"] for s in spans])
    return found[0]


def test_a_job_submitted_in_a_producers_span_makes_one_trace_that_its_event_continues(
    receiver: Receiver, producer: Producer, traced_client: Client, traced_worker: dramatiq.Worker
) -> None:
    with producer.tracer().start_as_current_span("request /evaluate", kind=trace.SpanKind.SERVER) as request_span:
        job_id = traced_client.submit(KIND, PARAMS, metadata={"ticket": "OPS-7"})
        produced = request_span.get_span_context()
    event = wait_job(traced_client, job_id)
    assert event["status"] == "completed", event
    carried = parse_traceparent(event["traceparent"])
    assert carried is not None and carried.trace_id == f"{produced.trace_id:032x}" and carried.sampled

    schema = jsonschema.Draft202012Validator(build_schemas()["result"])
    assert list(schema.iter_errors({k: v for k, v in event.items() if k != "id"})) == []  # with its traceparent
    # A consumer continues the trace from the event, as it would from an HTTP header.
    consumer = producer.tracer().start_span("handle result", context=propagate.extract(event))
    consumer.end()
    flush()
    spans = receiver.wait_for_span(carried.trace_id, "handle result")
    spans = receiver.wait_for_span(carried.trace_id, "send cekura:results")
    assert len({s["span_id"] for s in spans}) == len(spans)
    producer_span = _one(spans, "request /evaluate")
    job = _one(spans, f"job {KIND}")
    assert job["span_id"] == carried.span_id and job["parent_span_id"] == producer_span["span_id"]
    assert job["kind"] == "CONSUMER" and job["status"] == "OK"
    assert job["resource"]["service.name"] == "cekura-worker-test"
    attributes = job["attributes"]
    assert attributes["cekura.job.id"] == job_id and attributes["cekura.job.kind"] == KIND
    assert attributes["cekura.job.status"] == "completed" and attributes["cekura.status"] == event["cekura_status"]
    assert attributes["cekura.poll.count"] == int(event["polls"])

    start = _one(spans, "POST ")
    polls = _by_name(spans, "GET ")
    publish = _one(spans, "send cekura:results")
    for child in [start, *polls, publish]:
        assert child["parent_span_id"] == job["span_id"], child
        assert job["start_ns"] <= child["start_ns"] + 50_000_000  # the job's start is Redis's clock, the rest ours
    assert start["kind"] == "CLIENT" and start["attributes"]["http.request.method"] == "POST"
    assert start["attributes"]["http.response.status_code"] in (200, 201, 202)
    assert start["attributes"]["server.address"] == "127.0.0.1"
    assert start["attributes"]["url.full"].startswith(traced_client.settings.cekura_api_url)
    made = int(event["polls"])
    traced = [n for n in range(1, made + 1) if n <= DEFAULT_TRACED_POLLS or n == made]
    assert [p["attributes"]["cekura.poll.number"] for p in polls] == traced
    assert polls[-1]["attributes"]["cekura.status"] == event["cekura_status"]
    assert publish["attributes"]["messaging.message.id"] == event["id"]
    assert _one(spans, "handle result")["parent_span_id"] == job["span_id"]
    print(tree(spans, carried.trace_id, ("cekura.poll.number", "cekura.status", "http.response.status_code")))


def test_a_job_without_trace_context_begins_a_trace_of_its_own_and_logs_name_it(
    receiver: Receiver, traced_client: Client, traced_worker: dramatiq.Worker, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = traced_client.submit(KIND, PARAMS)
    event = wait_job(traced_client, job_id)
    carried = parse_traceparent(event["traceparent"])
    assert carried is not None
    flush()
    spans = receiver.wait_for_span(carried.trace_id, "send cekura:results")
    job = _one(spans, f"job {KIND}")
    assert job["parent_span_id"] == "" and job["span_id"] == carried.span_id
    about_the_job = [line for line in _logged(caplog) if line.get("job_id") == job_id]
    assert {"job_submitted", "job_started", "job_finished"} <= {line["event"] for line in about_the_job}
    for line in about_the_job:
        assert line.get("trace_id") == carried.trace_id, line
        assert line.get("span_id") == carried.span_id, line


def test_a_long_job_traces_its_first_polls_and_sums_up_the_rest(
    receiver: Receiver, sim: SimulatorHandle, traced_client: Client, traced_worker: dramatiq.Worker
) -> None:
    sim.configure(polls_to_complete=14)
    job_id = traced_client.submit(KIND, PARAMS)
    event = wait_job(traced_client, job_id)
    assert event["polls"] == "14", event
    carried = parse_traceparent(event["traceparent"])
    assert carried is not None
    flush()
    spans = receiver.wait_for_span(carried.trace_id, "send cekura:results")
    numbers = [p["attributes"]["cekura.poll.number"] for p in _by_name(spans, "GET ")]
    assert numbers == [*range(1, DEFAULT_TRACED_POLLS + 1), 14]  # the first ones and the one that ended the job
    summary = _one(spans, "polls")
    first = DEFAULT_TRACED_POLLS + 1
    assert summary["attributes"]["cekura.poll.first"] == first and summary["attributes"]["cekura.poll.last"] == 13
    assert summary["attributes"]["cekura.poll.count"] == 13 - first + 1
    assert summary["start_ns"] <= summary["end_ns"] and summary["parent_span_id"] == carried.span_id


def test_a_failed_call_is_an_error_span_and_a_failed_job_an_error_job_span(
    receiver: Receiver, traced_client: Client, traced_worker: dramatiq.Worker
) -> None:
    job_id = traced_client.submit(KIND, {**PARAMS, "agent": 403})  # the simulator answers 403
    event = wait_job(traced_client, job_id)
    assert event["status"] == "failed"
    carried = parse_traceparent(event["traceparent"])
    assert carried is not None
    flush()
    spans = receiver.wait_for_span(carried.trace_id, "send cekura:results")
    start = _one(spans, "POST ")
    assert start["status"] == "ERROR" and start["attributes"]["http.response.status_code"] == 403
    assert start["attributes"]["error.type"] == "403"
    job = _one(spans, f"job {KIND}")
    assert job["status"] == "ERROR" and job["attributes"]["cekura.job.status"] == "failed"


def test_a_retry_links_to_the_job_it_retries(
    receiver: Receiver, producer: Producer, traced_client: Client, traced_worker: dramatiq.Worker
) -> None:
    first = traced_client.submit(KIND, {**PARAMS, "agent": 403})
    failed = wait_job(traced_client, first)
    with producer.tracer().start_as_current_span("operator retries"):
        retried = traced_client.retry(first)
    again = wait_job(traced_client, retried)
    old, new = parse_traceparent(failed["traceparent"]), parse_traceparent(again["traceparent"])
    assert old is not None and new is not None and old.trace_id != new.trace_id
    flush()
    spans = receiver.wait_for_span(new.trace_id, "send cekura:results")
    job = _one(spans, f"job {KIND}")
    assert job["links"] == [
        {"trace_id": old.trace_id, "span_id": old.span_id, "attributes": {"cekura.link": "retry_of"}}
    ]
    assert _one(spans, "operator retries")["span_id"] == job["parent_span_id"]


def test_a_request_on_the_stream_continues_its_trace_and_a_malformed_one_is_ignored_not_rejected(
    receiver: Receiver,
    traced_rt: Runtime,
    traced_client: Client,
    traced_worker: dramatiq.Worker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from worker.intake.stream import Intake

    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    requests = {
        "traced": {"traceparent": parent, "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"},
        "bad": {"traceparent": "00-XYZ-b7ad6b7169203331-01", "tracestate": "ok=1"},
        "not-text": {"traceparent": {"nested": [1, 2]}},
        "bad-state": {"traceparent": parent, "tracestate": "no spaces allowed=x"},
    }
    for job_id, trace_fields in requests.items():
        request = {"kind": KIND, "params": PARAMS, "job_id": job_id, **trace_fields}
        traced_rt.redis.xadd(traced_rt.settings.cekura_requests_stream, {"request": json.dumps(request)})
    intake = Intake(traced_rt, name="test-intake")
    intake.ensure_group()
    wait_for(lambda: intake.read_once() == 0 and traced_rt.store.get("bad-state"), 10, "the requests to be read")
    events = {job_id: wait_job(traced_client, job_id) for job_id in requests}
    assert all(event["status"] == "completed" for event in events.values()), events
    traced = parse_traceparent(events["traced"]["traceparent"])
    assert traced is not None and traced.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert events["traced"]["tracestate"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    for job_id in ("bad", "not-text"):  # ignored: the job began a trace of its own
        own = parse_traceparent(events[job_id]["traceparent"])
        assert own is not None and own.trace_id != traced.trace_id
        assert "tracestate" not in events[job_id]
    assert parse_traceparent(events["bad-state"]["traceparent"]).trace_id == traced.trace_id  # type: ignore[union-attr]
    assert "tracestate" not in events["bad-state"]
    ignored = [line for line in _logged(caplog) if line["event"] == "trace_context_ignored"]
    assert sorted(line["reason"] for line in ignored) == [
        "malformed traceparent",
        "malformed traceparent",
        "malformed tracestate",
    ]
    flush()
    spans = receiver.wait_for_span(traced.trace_id, "send cekura:results")
    job = next(s for s in spans if s["span_id"] == traced.span_id)
    assert job["parent_span_id"] == "b7ad6b7169203331" and job["trace_state"] == events["traced"]["tracestate"]


def test_progress_events_carry_the_job_spans_traceparent(
    traced_settings: Any, sim: SimulatorHandle, receiver: Receiver
) -> None:
    from worker.runtime.app import bind_actors, setup

    rt = setup(traced_settings.model_copy(update={"cekura_progress_events": True}))
    bind_actors()
    worker = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        client = Client(rt.settings, client=rt.redis, broker=rt.broker)
        job_id = client.submit("agent.auto_fetch", {"agent_id": 42})
        event = wait_job(client, job_id)
    finally:
        worker.stop(timeout=10_000)
    progress = [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in rt.redis.xrange(rt.settings.cekura_progress_stream)
    ]
    mine = [p for p in progress if p["job_id"] == job_id]
    assert mine and all(p["traceparent"] == event["traceparent"] for p in mine)
    schema = jsonschema.Draft202012Validator(build_schemas()["progress"])
    assert [list(schema.iter_errors(p)) for p in mine] == [[] for _ in mine]


def test_an_event_of_a_job_without_trace_context_has_no_trace_fields(
    client: Client, worker: dramatiq.Worker, redis_client: redis.Redis
) -> None:
    job_id = client.submit(KIND, PARAMS)  # tracing off, no current span: the job has no trace context
    event = wait_job(client, job_id)
    assert "traceparent" not in event and "tracestate" not in event
    assert "traceparent" not in (client.status(job_id) or {})


def test_an_evaluator_run_reads_as_one_tree(
    receiver: Receiver, sim: SimulatorHandle, producer: Producer, traced_client: Client, traced_worker: dramatiq.Worker
) -> None:
    """The README's picture of a trace: an evaluator run polled 12 times, from a CI job's span to its consumer's."""
    sim.configure(polls_to_complete=12)
    with producer.tracer().start_as_current_span("ci: run evaluators", kind=trace.SpanKind.PRODUCER):
        job_id = traced_client.submit(
            "evaluator.run", {"scenarios": [101, 102, 103], "agent_id": 42, "name": "nightly"}
        )
    event = wait_job(traced_client, job_id)
    assert event["status"] == "completed", event
    consumer = producer.tracer().start_span("ci: gate on the verdict", context=propagate.extract(event))
    consumer.set_attribute("verdict", event["status"])
    consumer.end()
    flush()
    carried = parse_traceparent(event["traceparent"])
    assert carried is not None
    receiver.wait_for_span(carried.trace_id, "ci: gate on the verdict")
    spans = receiver.wait_for_span(carried.trace_id, "send cekura:results")
    shown = ("cekura.job.status", "cekura.poll.number", "cekura.poll.first", "cekura.poll.last", "cekura.status")
    drawn = tree(spans, carried.trace_id, shown)
    print(drawn)
    lines = [line.strip().split(" [")[0] for line in drawn.splitlines()]
    assert lines[:3] == ["ci: run evaluators", "job evaluator.run", "POST /test_framework/v1/scenarios/run_scenarios/"]
    assert lines.count("GET /test_framework/v1/results/{id}/") == DEFAULT_TRACED_POLLS + 1
    assert lines[-4:] == [
        "polls",
        "GET /test_framework/v1/results/{id}/",
        "send cekura:results",
        "ci: gate on the verdict",
    ]


def test_the_reconcilers_line_about_a_job_it_resends_names_the_job_span(
    traced_rt: Runtime, traced_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    from worker.runtime.reconciler import reconcile_once

    job_id = traced_client.submit(KIND, PARAMS)  # no worker: its start message waits in the queue
    carried = parse_traceparent(traced_rt.redis.hget(traced_rt.store.job_key(job_id), "traceparent").decode())
    assert carried is not None
    traced_rt.redis.zadd(traced_rt.store.schedule_key, {job_id: 0})  # overdue since 1970
    assert reconcile_once(traced_rt) == 1
    [line] = [line for line in _logged(caplog) if line.get("event") == "job_rescheduled"]
    assert (line["job_id"], line.get("trace_id"), line.get("span_id")) == (job_id, carried.trace_id, carried.span_id)
