"""Attacks on the shape of what `Tracing.record` exports and on who decides it: one trace per job, one job span
with its preset id, children parented on it with the job's trace id and tracestate, the configured sampler
(OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG) deciding per job, also across setups in one process, nothing
from an unsampled job, and well-formed OTLP (start <= end, valid ids, the kinds as before).

Each runs against the real Redis, simulator, Dramatiq worker and OTLP receiver process. A test ends its worker
before reading the receiver (every span a job makes is made by then) and flushes this process's batch processor.
The two marked BROKE failed before the fixes that came with them (`tracing.leave()` after every message, the remote
cancel entering its job before the lookup, `record` clamping the end); they pass now.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from config.settings import Settings
from simulator import SimulatorHandle
from tests.conftest import make_settings
from tests.support import wait_for
from tests.tracing.conftest import Producer, Receiver, flush, wait_job
from tests.tracing.receiver import tree
from worker import tracing
from worker.client import Client
from worker.intake import submission
from worker.runtime.app import Runtime, bind_actors, setup
from worker.store.records import Phase
from worker.tracing import parse_traceparent

KIND = "metric.clean_description"
PARAMS = {"agent": 42, "metric_description": "did the agent greet the caller", "eval_type": "boolean"}
SERVICE = "cekura-worker-test"
#: What each kind of span is (OTLP's kinds as the receiver names them), by the start of its name.
KINDS = {"job ": "CONSUMER", "POST ": "CLIENT", "GET ": "CLIENT", "polls": "INTERNAL", "send ": "PRODUCER"}


# -- helpers ---------------------------------------------------------------------------------------------------


def _settings(sim: SimulatorHandle, receiver: Receiver, **overrides: Any) -> Settings:
    return make_settings(sim.url, otel_exporter_otlp_endpoint=receiver.url, otel_service_name=SERVICE, **overrides)


def _runtime(settings: Settings) -> Runtime:
    rt = setup(settings)
    bind_actors()
    assert tracing.enabled
    return rt


def _worker(rt: Runtime, threads: int = 4) -> dramatiq.Worker:
    w = dramatiq.Worker(rt.broker, worker_threads=threads, worker_timeout=100)
    w.start()
    return w


@pytest.fixture(autouse=True)
def _tracing_off_after() -> Iterator[None]:
    yield
    tracing.shutdown()


def _trace_id(low: int) -> str:
    """A trace id whose low 64 bits (what TraceIdRatioBased reads) are `low`, the high ones random."""
    return os.urandom(8).hex() + f"{low:016x}"


def _stream(rt: Runtime, requests: dict[str, dict[str, Any]]) -> None:
    """Put `requests` (job id: its trace fields) on the request stream and let an intake read them all."""
    from worker.intake.stream import Intake

    for job_id, fields in requests.items():
        request = {"kind": KIND, "params": PARAMS, "job_id": job_id, **fields}
        rt.redis.xadd(rt.settings.cekura_requests_stream, {"request": json.dumps(request)})
    intake = Intake(rt, name=f"attack-record-{os.getpid()}")
    intake.ensure_group()
    wait_for(lambda: intake.read_once() == 0 and all(rt.store.get(j) for j in requests), 15, "the requests to be read")


def _worker_spans(receiver: Receiver, trace_id: str) -> list[dict[str, Any]]:
    return [s for s in receiver.trace(trace_id) if s["resource"].get("service.name") == SERVICE]


def _kind_of(name: str) -> str:
    return next(kind for prefix, kind in KINDS.items() if name.startswith(prefix))


def _check_trace(
    spans: list[dict[str, Any]], events: dict[str, dict[str, str]], parents: dict[str, str], tracestate: str = ""
) -> None:
    """The worker's spans of one trace are exactly the job spans of `events` (job id: result event), each with the
    id its event carries and the producer span `parents[job id]` ("" for a root) as parent, and their children:
    each parented on one of them, a start call, at least one poll and one publish per job, all with the trace's
    id and `tracestate`, valid unique ids, start <= end, and the kinds as before."""
    drawn = tree(spans, spans[0]["trace_id"]) if spans else "(none)"
    jobs = {s["span_id"]: s for s in spans if s["name"].startswith("job ")}
    by_job = {j["attributes"]["cekura.job.id"]: j for j in jobs.values()}
    assert len(by_job) == len(jobs) and sorted(by_job) == sorted(events), drawn
    for job_id, event in events.items():
        carried = parse_traceparent(event["traceparent"])
        assert carried is not None
        job = by_job[job_id]
        assert job["span_id"] == carried.span_id and job["trace_id"] == carried.trace_id, (job_id, drawn)
        assert job["parent_span_id"] == parents[job_id], (job_id, drawn)
        names = sorted(s["name"] for s in spans if s["parent_span_id"] == job["span_id"])
        assert names.count("send cekura:results") == 1, (job_id, names)
        assert sum(n.startswith("POST ") for n in names) == 1 and any(n.startswith("GET ") for n in names), names
    assert len({s["span_id"] for s in spans}) == len(spans), drawn
    for span in spans:
        assert span["trace_id"] == spans[0]["trace_id"] and span["trace_id"] != "0" * 32, span
        assert len(span["span_id"]) == 16 and span["span_id"] != "0" * 16, span
        assert span["start_ns"] <= span["end_ns"], (span["name"], span["start_ns"], span["end_ns"])
        assert span["trace_state"] == tracestate, (span["name"], span["trace_state"], tracestate)
        assert span["kind"] == _kind_of(span["name"]), span
        assert span["scope"] == "cekura-worker", span
        if span["span_id"] not in jobs:
            assert span["parent_span_id"] in jobs, (span["name"], drawn)


# -- 1. the sampler, set through the environment, set up again and again in one process ---------------------------

#: (OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, a job under a sampled producer span recorded, a root job recorded)
SAMPLERS = [
    ("always_on", None, True, True),
    ("always_off", None, False, False),
    ("traceidratio", "0", False, False),
    ("traceidratio", "1", True, True),
    ("parentbased_always_off", None, True, False),
    ("parentbased_traceidratio", "0", True, False),
    ("always_on", None, True, True),
]


def test_each_setup_s_sampler_from_the_environment_decides_its_jobs(
    receiver: Receiver, sim: SimulatorHandle, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sampler through OTEL_TRACES_SAMPLER / _ARG, changed between seven setups in this one process (always_on,
    always_off, traceidratio 0 and 1, parentbased_always_off, parentbased_traceidratio 0, always_on again), each
    running three jobs: one under a sampled producer span (flags 01), one under an unsampled one (flags 00: also
    "flags 00 but always_on"), one submitted without trace context (a root, its flag decided here).

    HELD: every job is recorded exactly as its setup's sampler says (the `_job` cache keeps no decision of an
    earlier setup), a recorded one whole (one job span, its children on it), an unrecorded one with no span at all;
    a root's event flag says sampled exactly when it was recorded. A job flagged 00 is never recorded, not even
    under always_on: "an unsampled job makes no spans" (an SDK Tracer with ALWAYS_ON would record a child of that
    parent; the service follows the job's flag, as before this change)."""
    for n, (sampler, arg, producer_recorded, root_recorded) in enumerate(SAMPLERS):
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
        if arg is None:
            monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
        else:
            monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
        settings = _settings(sim, receiver)
        rt = _runtime(settings)
        client = Client(settings, client=rt.redis, broker=rt.broker)
        sampled, unsampled = _trace_id(n + 1), _trace_id(n + 1)
        _stream(
            rt,
            {
                f"s{n}-sampled": {"traceparent": f"00-{sampled}-00f067aa0ba902b7-01"},
                f"s{n}-unsampled": {"traceparent": f"00-{unsampled}-00f067aa0ba902b7-00"},
            },
        )
        root = client.submit(KIND, PARAMS, job_id=f"s{n}-root")
        w = _worker(rt)
        try:
            events = {j: wait_job(client, j) for j in (f"s{n}-sampled", f"s{n}-unsampled", root)}
        finally:
            w.stop(timeout=10_000)
        flush()
        assert all(e["status"] == "completed" for e in events.values()), events
        carried_root = parse_traceparent(events[root]["traceparent"])
        assert carried_root is not None
        expected = {
            f"s{n}-sampled": (sampled, producer_recorded, "00f067aa0ba902b7"),
            f"s{n}-unsampled": (unsampled, False, "00f067aa0ba902b7"),
            root: (carried_root.trace_id, root_recorded, ""),
        }
        assert carried_root.sampled == root_recorded, (sampler, arg, events[root]["traceparent"])
        for job_id, (trace_id, recorded, parent) in expected.items():
            spans = _worker_spans(receiver, trace_id)
            if recorded:
                _check_trace(spans, {job_id: events[job_id]}, {job_id: parent})
            else:
                assert spans == [], (sampler, arg, job_id, tree(spans, trace_id))


# -- 2. traceidratio 0.5 across many jobs at once ----------------------------------------------------------------


def test_traceidratio_one_half_records_whole_traces_or_nothing_across_many_concurrent_jobs(
    receiver: Receiver, sim: SimulatorHandle, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_TRACES_SAMPLER=traceidratio, ARG=0.5; 16 producer traces (8 whose trace id the ratio keeps, 8 it
    drops), two jobs each with different producer spans, and 16 jobs submitted without trace context, 48 jobs run
    by 8 worker threads at once, a third of them polled 4 times (a `polls` summary).

    HELD: a trace is recorded exactly when the SDK's own TraceIdRatioBased(0.5) keeps its trace id (a root's event
    flag agrees); a recorded trace holds both of its jobs whole (two job spans, each with its preset id and its
    producer span as parent, every child on one of them, valid unique ids, start <= end, kinds as before), a
    dropped one nothing."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    sim.configure(polls_to_complete=4)
    settings = _settings(sim, receiver)
    rt = _runtime(settings)
    client = Client(settings, client=rt.redis, broker=rt.broker)
    half = 1 << 63
    traces = [_trace_id(n * 1000 + 1) for n in range(8)] + [_trace_id(half + n * 1000) for n in range(8)]
    requests: dict[str, dict[str, Any]] = {}
    parents: dict[str, str] = {}
    for t, trace_id in enumerate(traces):
        for j in range(2):
            parent = f"{t + 1:08x}{j + 1:08x}"
            requests[f"ratio-{t}-{j}"] = {"traceparent": f"00-{trace_id}-{parent}-01"}
            parents[f"ratio-{t}-{j}"] = parent
    w = _worker(rt, threads=8)
    try:
        _stream(rt, requests)
        roots = [client.submit(KIND, PARAMS, job_id=f"ratio-root-{n}") for n in range(16)]
        events = {j: wait_job(client, j) for j in [*requests, *roots]}
    finally:
        w.stop(timeout=10_000)
    flush()
    assert {e["status"] for e in events.values()} == {"completed"}
    ratio = TraceIdRatioBased(0.5)
    kept = 0
    for t, trace_id in enumerate(traces):
        jobs = {f"ratio-{t}-{j}": events[f"ratio-{t}-{j}"] for j in range(2)}
        spans = _worker_spans(receiver, trace_id)
        if ratio.should_sample(None, int(trace_id, 16), "job").decision.is_sampled():
            kept += 1
            _check_trace(spans, jobs, parents)
        else:
            assert spans == [], tree(spans, trace_id)
    assert kept == 8
    for root in roots:
        carried = parse_traceparent(events[root]["traceparent"])
        assert carried is not None
        keeps = ratio.should_sample(None, int(carried.trace_id, 16), "job").decision.is_sampled()
        assert carried.sampled == keeps, events[root]
        spans = _worker_spans(receiver, carried.trace_id)
        if keeps:
            _check_trace(spans, {root: events[root]}, {root: ""})
        else:
            assert spans == [], tree(spans, carried.trace_id)


# -- 3. a tracestate of several members ----------------------------------------------------------------------------


def test_a_tracestate_of_several_members_reaches_every_span_of_the_job(
    receiver: Receiver, sim: SimulatorHandle, redis_client: Any
) -> None:
    """A producer's tracestate of four members (a multi-tenant key, a value with an inner space, '/' and '*' in
    keys) on a job polled 6 times (its polls 3-5 summed up).

    HELD: the job span, the start call, the traced polls, the `polls` summary and the publish all carry the
    tracestate as it came (members in order), the producer's trace id, and the job span as parent."""
    state = "congo=t61rcWkgMzE,t0@vendor=a b,ro/j*o=00f067aa0ba902b7,x=1"
    sim.configure(polls_to_complete=6)
    settings = _settings(sim, receiver)
    rt = _runtime(settings)
    client = Client(settings, client=rt.redis, broker=rt.broker)
    trace_id = _trace_id(7)
    _stream(rt, {"several": {"traceparent": f"00-{trace_id}-b7ad6b7169203331-01", "tracestate": state}})
    w = _worker(rt)
    try:
        event = wait_job(client, "several")
    finally:
        w.stop(timeout=10_000)
    flush()
    assert event["tracestate"] == state and event["status"] == "completed", event
    spans = _worker_spans(receiver, trace_id)
    _check_trace(spans, {"several": event}, {"several": "b7ad6b7169203331"}, tracestate=state)
    assert sorted(s["name"] for s in spans).count("polls") == 1, tree(spans, trace_id)


# -- 4. a thread's scope outliving its message ---------------------------------------------------------------------


def test_a_remote_cancels_lookup_is_not_filed_under_the_job_its_thread_ran_before(
    receiver: Receiver, sim: SimulatorHandle, producer: Producer, redis_client: Any
) -> None:
    """An evaluator run B loses its start answer and is cancelled while it looks for its run by its tag: the
    finish script writes `cancel_remote(B)` with no id, and the worker thread that takes it looks the run up at
    Cekura (`find_to_cancel`, GET /test_framework/v1/results/?search=...) before it `enter_job`s B. The worker
    has one thread, which last ran job A's steps (a different job, in a different producer trace).

    BROKE: the lookup's CLIENT span is exported in A's trace, parented on A's job span (A has by then ended: its
    trace gains a child after its job span, and a call A never made); B's trace lacks it. The step's scope
    (`spans._scope`, a ContextVar of the worker thread) is set by each step and never cleared after the message,
    and `actors/jobs.py::cancel_remote` calls `find_to_cancel` (actors/lookup.py:135, `rt.cekura.find`) before
    `tracing.enter_job`, so `TracedCekuraClient._call` (worker/tracing/calls.py: `current()`) parents the call
    on whatever job that thread ran last (and records it if that job was sampled, whatever B's flag)."""
    settings = _settings(sim, receiver, cekura_lookup_settle_s=8.0)
    rt = _runtime(settings)
    client = Client(settings, client=rt.redis, broker=rt.broker)
    tracer = producer.tracer()
    with tracer.start_as_current_span("submit B") as span_b:
        b = client.submit("evaluator.run", {"scenarios": [1], "name": "looked for"}, job_id="looking")
        trace_b = f"{span_b.get_span_context().trace_id:032x}"
    claim = rt.store.claim(b, Phase.START, 0)  # B's start is this process's: the worker never runs a step of B
    assert claim.verdict == "ok"
    w = _worker(rt, threads=1)
    try:
        with tracer.start_as_current_span("submit A") as span_a:
            a = client.submit(KIND, PARAMS, job_id="before")
            trace_a = f"{span_a.get_span_context().trace_id:032x}"
        event_a = wait_job(client, a)
        assert event_a["status"] == "completed"
        flush()
        before = receiver.wait_for_span(trace_a, "send cekura:results")

        def lose_b_s_start() -> None:  # in a thread of its own: its step's scope is B's, and dies with it
            from actors import jobs, lookup
            from actors.step import make_step

            lookup.lost_start(make_step(rt, b, Phase.START, claim), "its answer was lost", jobs._next_poll)

        losing = threading.Thread(target=lose_b_s_start)
        losing.start()
        losing.join(10)
        assert client.status(b)["state"] == "polling" and not client.status(b).get("progress_id")
        looked = _lookups(sim)
        assert submission.cancel(rt.store, rt.broker, b).result == "cancelled"  # cancel_remote(B), no id
        wait_for(lambda: _lookups(sim) > looked, 15, "cancel_remote to look B's run up")
    finally:
        w.stop(timeout=10_000)
    flush()
    after = receiver.trace(trace_a)
    added = [s for s in after if s["span_id"] not in {p["span_id"] for p in before}]
    assert added == [], f"job A's trace gained {[(s['name'], s['parent_span_id']) for s in added]}:\n" + tree(
        after, trace_a
    )
    job_b = [s for s in receiver.wait_for_span(trace_b, "job evaluator.run") if s["name"] == "job evaluator.run"]
    assert len(job_b) == 1
    for span in receiver.trace(trace_b):
        if span["name"].startswith("GET "):
            assert span["parent_span_id"] == job_b[0]["span_id"], span


def _lookups(sim: SimulatorHandle) -> int:
    """Requests the simulator served on its results list (the lookup by tag)."""
    return sum(count for route, count in sim.stats()["by_route"].items() if "list" in route)


# -- 5. a wall clock stepped back during a finish --------------------------------------------------------------


class _SteppedBack:
    """`time` as a module is, its wall clock 1 s behind from now on (an NTP step, a VM resumed)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def time_ns() -> int:
        return time.time_ns() - 1_000_000_000


def test_the_publish_span_never_ends_before_it_starts_when_the_wall_clock_steps_back(
    receiver: Receiver, sim: SimulatorHandle, producer: Producer, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel ends a job in this process; the host's wall clock steps back 1 s between the moment the finish
    began (`published_ns`, read in `submission.cancel`) and the end of the publish span (read in `spans.ended`).

    BROKE: the `send cekura:results` span is exported with end_ns 1 s before start_ns, a negative duration
    (worker/tracing/spans.py, `ended`: `start_ns=published_ns, end_ns=time.time_ns()`, unclamped, while the job span
    beside it is clamped "never a negative duration" and the `polls` span's end too). The SDK's own Tracer does the
    same with those two times (`span.end(end_time=...)` does not clamp), so this is not new with `record`, but the
    exported span is not well-formed. Call spans have the same two unclamped reads (calls.py `_call`)."""
    from worker.tracing import spans as spans_module

    settings = _settings(sim, receiver)
    rt = _runtime(settings)
    client = Client(settings, client=rt.redis, broker=rt.broker)
    with producer.tracer().start_as_current_span("submit") as span:
        job_id = client.submit(KIND, PARAMS, job_id="stepped-back")  # no worker: it waits for its start
        trace_id = f"{span.get_span_context().trace_id:032x}"
    monkeypatch.setattr(spans_module, "time", _SteppedBack())
    assert submission.cancel(rt.store, rt.broker, job_id).result == "cancelled"
    flush()
    spans = receiver.wait_for_span(trace_id, "send cekura:results")
    for span in spans:
        assert span["start_ns"] <= span["end_ns"], (span["name"], span["end_ns"] - span["start_ns"])
