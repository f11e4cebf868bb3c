"""Attacks on the trace's shape: one job, one trace, exactly one job span, and nothing when off.

Hostile W3C trace context at intake (stream and client), two finishers racing, a retry of a retry, clocks that
disagree, a job of many polls and an unsampled producer, each run against the real Redis, worker, simulator and
OTLP receiver.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import CarrierT, Getter, Setter, TextMapPropagator, default_setter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from simulator import SimulatorHandle
from tests.conftest import TEST_REDIS_URL
from tests.support import wait_for
from tests.tracing.conftest import ROOT, Producer, Receiver, flush, run_clean, wait_job
from tests.tracing.receiver import tree
from worker.client import Client
from worker.intake import submission
from worker.runtime.app import Runtime
from worker.tracing import DEFAULT_TRACED_POLLS, parse_traceparent

KIND = "metric.clean_description"
PARAMS = {"agent": 42, "metric_description": "did the agent greet the caller", "eval_type": "boolean"}
GOOD = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
GOOD_TRACE = "0af7651916cd43dd8448eb211c80319c"


def _logged(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.msg for r in caplog.records if isinstance(r.msg, dict)]


def _jobs(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [span for span in spans if span["name"].startswith("job ")]


def _read_stream(rt: Runtime, requests: dict[str, dict[str, Any]]) -> None:
    from worker.intake.stream import Intake

    for job_id, fields in requests.items():
        request = {"kind": KIND, "params": PARAMS, "job_id": job_id, **fields}
        rt.redis.xadd(rt.settings.cekura_requests_stream, {"request": json.dumps(request)})
    intake = Intake(rt, name="attack-intake")
    intake.ensure_group()
    last = list(requests)[-1]
    wait_for(lambda: intake.read_once() == 0 and rt.store.get(last), 15, "the requests to be read")


# -- 1. trace context in, out ----------------------------------------------------------------------------------


HOSTILE_TRACEPARENTS = {
    "version-ff": "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "zero-trace": f"00-{'0' * 32}-b7ad6b7169203331-01",
    "zero-span": f"00-0af7651916cd43dd8448eb211c80319c-{'0' * 16}-01",
    "upper-hex": GOOD.upper(),
    "v00-extra": GOOD + "-extra",
    "ten-kb": GOOD + "-" + "a" * 10_000,
    "non-ascii": GOOD[:-2] + "\uff10\uff11",  # full-width digits 0 and 1
    "nul": GOOD + "\x00",
    "newline": GOOD[:-2] + "\n1",
    "number": 12345,
    "empty": "",
}

HOSTILE_TRACESTATES = {
    "ts-oversized": "a=" + "b" * 255 + ",c=" + "d" * 255,
    "ts-33-members": ",".join(f"k{i}=v" for i in range(33)),
    "ts-invalid-key": "Upper=1",
    "ts-duplicate": "a=1,a=2",
    "ts-nul": "a=b\x00",
    "ts-list": ["a=1"],
}


def test_hostile_trace_context_on_the_stream_is_ignored_with_a_log_line_never_a_rejection(
    receiver: Receiver,
    traced_rt: Runtime,
    traced_client: Client,
    traced_worker: dramatiq.Worker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Guarantee 1 (malformed context ignored with `trace_context_ignored`, never a rejection, the job continues a
    valid parent and a future version's extra fields are ignored).

    HELD: traceparent with version ff, all-zero trace id, all-zero span id, upper-case hex, version 00 with a field
    after the flags, 10 KB long, full-width (non-ASCII) digits, a NUL, a newline, a number, an empty string, each
    job completed with a trace of its own and one `malformed traceparent` line each; tracestate oversized (517
    chars), 33 members, an upper-case key, duplicate keys, a NUL, a JSON list: the job continued the valid parent
    without tracestate, one `malformed tracestate` line each; commas only: kept as an empty tracestate, silently;
    a future version (cc) with extra fields: continued, its event a version-00 traceparent."""
    requests: dict[str, dict[str, Any]] = {name: {"traceparent": tp} for name, tp in HOSTILE_TRACEPARENTS.items()}
    requests |= {name: {"traceparent": GOOD, "tracestate": ts} for name, ts in HOSTILE_TRACESTATES.items()}
    requests["ts-commas"] = {"traceparent": GOOD, "tracestate": ",,, ,\t,"}
    requests["future"] = {"traceparent": "cc-" + GOOD[3:] + "-some-future-field", "tracestate": "x=1"}
    _read_stream(traced_rt, requests)
    events = {job_id: wait_job(traced_client, job_id) for job_id in requests}
    assert {job_id: e["status"] for job_id, e in events.items()} == dict.fromkeys(requests, "completed")
    for name in HOSTILE_TRACEPARENTS:
        own = parse_traceparent(events[name]["traceparent"])
        assert own is not None and own.trace_id != GOOD_TRACE, (name, events[name])
        assert "tracestate" not in events[name]
    for name in [*HOSTILE_TRACESTATES, "ts-commas"]:
        carried = parse_traceparent(events[name]["traceparent"])
        assert carried is not None and carried.trace_id == GOOD_TRACE, name
        assert "tracestate" not in events[name], (name, events[name])
    future = parse_traceparent(events["future"]["traceparent"])
    assert future is not None and future.trace_id == GOOD_TRACE and events["future"]["traceparent"].startswith("00-")
    assert events["future"]["tracestate"] == "x=1"

    ignored = [line for line in _logged(caplog) if line["event"] == "trace_context_ignored"]
    reasons = sorted(line["reason"] for line in ignored)
    expected = ["malformed traceparent"] * len(HOSTILE_TRACEPARENTS) + ["malformed tracestate"] * len(
        HOSTILE_TRACESTATES
    )
    assert reasons == sorted(expected), reasons
    assert all(len(line.get("traceparent", "")) <= 67 for line in ignored)  # quoted, not the 10 KB
    flush()
    spans = receiver.wait_for_span(GOOD_TRACE, "send cekura:results")
    wait_for(
        lambda: len(_jobs(receiver.trace(GOOD_TRACE))) >= len(HOSTILE_TRACESTATES) + 2,
        15,
        "the job spans of the jobs that continued the trace",
    )
    spans = receiver.trace(GOOD_TRACE)
    assert all(job["parent_span_id"] == "b7ad6b7169203331" for job in _jobs(spans))


def test_a_lone_surrogate_in_a_streamed_traceparent_still_leaves_its_log_line() -> None:
    """Guarantee 1 (a malformed traceparent is ignored *with a log line*).

    HELD since `_quote` escapes it; was BREAK: a request on the stream whose `traceparent` is JSON text with a lone
    surrogate escape (`"...-0\\ud800"`,
    valid JSON, which the intake decodes) is accepted and ignored, but in a worker process with its logging set
    up (JSON to stdout) the `trace_context_ignored` line is never written: `context._quote` keeps the surrogate,
    stdout can't encode it, and logging prints `--- Logging error ---` and a traceback to stderr instead. Every
    other value of a request is refused for a lone surrogate (`values.check_values`); trace keys skip that check."""
    program = (
        "import json\n"
        "from config.settings import load_settings\n"
        "from worker.runtime.app import setup\n"
        "from worker.intake import requests\n"
        f"s = load_settings(redis_url={TEST_REDIS_URL!r}, cekura_api_key='test-key', log_format='json')\n"
        "setup(s)\n"
        f"tp = {GOOD[:-1]!r} + chr(0xD800)\n"
        "raw = json.dumps({'kind': 'agent.auto_fetch', 'params': {'agent_id': 42}, 'traceparent': tp})\n"
        "assert requests.parse(raw, s).trace is None\n"
        "print('parsed', flush=True)\n"
    )
    done = run_clean(program, ROOT)
    assert done.returncode == 0, done.stderr
    assert "Logging error" not in done.stderr, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [line["event"] for line in lines if line["event"] == "trace_context_ignored"] == ["trace_context_ignored"]


class _VerbatimPropagator(TextMapPropagator):
    """An application's propagator that forwards an inbound request's trace headers as it received them."""

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields

    def extract(
        self, carrier: CarrierT, context: Context | None = None, getter: Getter[CarrierT] | None = None
    ) -> Context:
        return context or Context()

    def inject(
        self, carrier: CarrierT, context: Context | None = None, setter: Setter[CarrierT] = default_setter
    ) -> None:
        for key, value in self._fields.items():
            setter.set(carrier, key, value)

    @property
    def fields(self) -> set[str]:
        return set(self._fields)


@pytest.fixture
def verbatim() -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(_VerbatimPropagator(fields))
    try:
        yield fields
    finally:
        propagate.set_global_textmap(previous)


def test_the_client_ignores_hostile_trace_context_from_the_applications_propagator(
    traced_client: Client, traced_worker: dramatiq.Worker, verbatim: dict[str, str]
) -> None:
    """Guarantee 1 through the Python client (the caller's propagator's fields).

    HELD: version ff, upper-case hex, a 10 KB traceparent, a NUL, a 33-member and a duplicate-key tracestate: each
    submission accepted and completed, a trace of its own for a bad traceparent, the parent kept for a bad
    tracestate."""
    cases = [
        {"traceparent": HOSTILE_TRACEPARENTS["version-ff"]},
        {"traceparent": GOOD.upper()},
        {"traceparent": HOSTILE_TRACEPARENTS["ten-kb"]},
        {"traceparent": GOOD + "\x00"},
        {"traceparent": GOOD, "tracestate": HOSTILE_TRACESTATES["ts-33-members"]},
        {"traceparent": GOOD, "tracestate": "a=1,a=2"},
    ]
    for case in cases:
        verbatim.clear()
        verbatim.update(case)
        event = wait_job(traced_client, traced_client.submit(KIND, PARAMS))
        assert event["status"] == "completed" and "tracestate" not in event
        carried = parse_traceparent(event["traceparent"])
        assert carried is not None and (carried.trace_id == GOOD_TRACE) == ("tracestate" in case), case


def test_a_lone_surrogate_from_the_applications_propagator_does_not_refuse_the_submission(
    traced_client: Client, traced_worker: dramatiq.Worker, verbatim: dict[str, str]
) -> None:
    """Guarantee 1 (trace context is never a reason to reject), through the Python client.

    HELD since `build` counts only kept trace fields; was BREAK: an application propagator that forwards an inbound
    `tracestate` holding a lone surrogate (an HTTP
    header decoded with `surrogateescape`) makes `Client.submit` raise `InvalidRequest: request is not valid JSON:
    NaN or Infinity is not a JSON number`: `requests.build` measures the trace fields with the request
    (`_check_size_and_numbers`), whose `.encode("utf-8")` raises `UnicodeEncodeError`, a `ValueError`, read as a NaN.
    The stream path accepts the same request and drops the tracestate."""
    verbatim.update({"traceparent": GOOD, "tracestate": "a=b\udcff"})
    job_id = traced_client.submit(KIND, PARAMS)
    event = wait_job(traced_client, job_id)
    assert event["status"] == "completed" and parse_traceparent(event["traceparent"]).trace_id == GOOD_TRACE  # type: ignore[union-attr]


def test_a_valid_tracestate_with_a_long_simple_key_is_carried_to_the_event(
    traced_rt: Runtime, traced_client: Client, traced_worker: dramatiq.Worker
) -> None:
    """Guarantee 1 (the producer's tracestate comes back on the event).

    HELD since `_MEMBER` follows W3C; was BREAK: W3C Trace Context's `simple-key = lcalpha 0*255(...)` allows keys of
    up to 256 characters (and so does
    OpenTelemetry's `TraceState`), but `context._MEMBER` allows a simple key of at most 241 (`{0,240}`, the
    tenant-id's bound): a valid `tracestate` `"<250 a's>=x"` (252 chars, under the 512 kept) is logged as malformed
    and dropped, and the event carries none."""
    state = "a" * 250 + "=x"
    _read_stream(traced_rt, {"long-key": {"traceparent": GOOD, "tracestate": state}})
    event = wait_job(traced_client, "long-key")
    assert event.get("tracestate") == state, event


# -- 2. exactly one job span per job ---------------------------------------------------------------------------


def test_a_cancel_racing_the_workers_finish_makes_one_job_span(
    receiver: Receiver,
    sim: SimulatorHandle,
    producer: Producer,
    traced_rt: Runtime,
    traced_client: Client,
    traced_worker: dramatiq.Worker,
) -> None:
    """Guarantee 2 (exactly one job span, by whichever process ends the job).

    HELD: 12 jobs of 3 polls, each cancelled by two threads at once (`submission.cancel`, tracing on in this
    process), job n n * 15 ms after its 2nd poll, so that some cancels land before, some during and some after
    the worker's finish (a run printed both `cancelled` and `completed`); whichever of the three finishers won,
    each trace holds exactly one job span, whose status is the event's, and one `send cekura:results`."""
    sim.configure(polls_to_complete=3)
    with producer.tracer().start_as_current_span("submit many") as span:
        job_ids = [traced_client.submit(KIND, PARAMS, job_id=f"race-{n}") for n in range(12)]
        trace_id = f"{span.get_span_context().trace_id:032x}"

    def cancel_when_polled(job_id: str, stagger_s: float) -> None:
        polled = lambda: int((traced_client.status(job_id) or {}).get("polls", 0)) >= 2  # noqa: E731
        wait_for(polled, 30, "two polls", interval=0.005)
        threading.Event().wait(stagger_s)  # job n cancels n * 15 ms after its 2nd poll: across its last poll
        submission.cancel(traced_rt.store, traced_rt.broker, job_id)

    threads = [
        threading.Thread(target=cancel_when_polled, args=(j, n * 0.015)) for n, j in enumerate(job_ids) for _ in "ab"
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    events = {job_id: wait_job(traced_client, job_id) for job_id in job_ids}
    assert len(traced_rt.redis.xrange(traced_rt.settings.cekura_results_stream)) == len(job_ids)
    flush()
    wait_for(lambda: len(_jobs(receiver.trace(trace_id))) >= len(job_ids), 20, "every job span")
    spans = receiver.trace(trace_id)
    jobs = _jobs(spans)
    assert sorted(j["attributes"]["cekura.job.id"] for j in jobs) == sorted(job_ids), tree(spans, trace_id)
    for job in jobs:
        event = events[job["attributes"]["cekura.job.id"]]
        assert job["attributes"]["cekura.job.status"] == event["status"]
        assert job["span_id"] == parse_traceparent(event["traceparent"]).span_id  # type: ignore[union-attr]
    assert len([s for s in spans if s["name"] == "send cekura:results"]) == len(job_ids)
    print(sorted(e["status"] for e in events.values()))


def test_a_retry_of_a_retry_links_to_the_retry_it_retries(
    receiver: Receiver, traced_client: Client, traced_worker: dramatiq.Worker
) -> None:
    """Guarantee 2 (a retried job links to the job it retries).

    HELD: a failed job retried, its retry (failed again) retried: the second retry's job span has one link, to the
    first retry's job span (not to the original), and the first retry's to the original; three traces."""
    first = traced_client.submit(KIND, {**PARAMS, "agent": 403})
    events = [wait_job(traced_client, first)]
    job_ids = [first]
    for _ in range(2):
        job_ids.append(traced_client.retry(job_ids[-1]))
        events.append(wait_job(traced_client, job_ids[-1]))
    contexts = [parse_traceparent(e["traceparent"]) for e in events]
    assert all(c is not None for c in contexts) and len({c.trace_id for c in contexts}) == 3  # type: ignore[union-attr]
    flush()
    for older, newer in itertools.pairwise(contexts):
        assert older is not None and newer is not None
        [job] = _jobs(receiver.wait_for_span(newer.trace_id, "send cekura:results"))
        assert job["links"] == [
            {"trace_id": older.trace_id, "span_id": older.span_id, "attributes": {"cekura.link": "retry_of"}}
        ]


def test_a_job_span_never_ends_before_it_starts_when_clocks_disagree(
    receiver: Receiver, producer: Producer, traced_rt: Runtime, traced_client: Client
) -> None:
    """Guarantee 2 (start and end from the Redis clock).

    HELD since the start is clamped; was BREAK: a job whose record's `submitted_ms` is later than the clock that
    finishes it (a Redis failover to a
    replica whose clock is behind; here `submitted_ms` set 60 s ahead) is cancelled by this process (tracing on):
    the job span is exported with `end_ns` 60 s before `start_ns`, a negative duration the backend shows as such
    (`spans.ended` takes `start_time=submitted_ms` unclamped; the `polls` span's end is clamped, the job span's
    is not)."""
    with producer.tracer().start_as_current_span("submit") as span:
        job_id = traced_client.submit(KIND, PARAMS, job_id="clock-skew")  # no worker: it waits for its start
        trace_id = f"{span.get_span_context().trace_id:032x}"
    key = traced_rt.store.job_key(job_id)
    submitted = int(traced_rt.redis.hget(key, "submitted_ms"))
    traced_rt.redis.hset(key, "submitted_ms", submitted + 60_000)
    assert submission.cancel(traced_rt.store, traced_rt.broker, job_id).result == "cancelled"
    flush()
    [job] = _jobs(receiver.wait_for_span(trace_id, f"job {KIND}"))
    assert job["start_ns"] <= job["end_ns"], (job["start_ns"], job["end_ns"], job["end_ns"] - job["start_ns"])


def test_fifty_polls_make_seven_spans(
    receiver: Receiver, sim: SimulatorHandle, traced_client: Client, traced_worker: dramatiq.Worker
) -> None:
    """Guarantee 2 (a long job does not make one span per poll).

    HELD: a job polled 50 times against the fast simulator: its trace holds exactly 7 spans (the job, the start,
    polls 1, 2 and 50, one `polls` span for 3-49, the publish), none ending before it starts."""
    sim.configure(polls_to_complete=50)
    job_id = traced_client.submit(KIND, PARAMS, deadline_s=120)
    event = wait_job(traced_client, job_id, timeout=120)
    assert event["status"] == "completed" and event["polls"] == "50", event
    carried = parse_traceparent(event["traceparent"])
    assert carried is not None
    flush()
    spans = receiver.wait_for_span(carried.trace_id, "send cekura:results")
    names = sorted(s["name"] for s in spans)
    assert len(spans) == 4 + DEFAULT_TRACED_POLLS + 1, tree(spans, carried.trace_id)
    assert names.count("polls") == 1 and len(_jobs(spans)) == 1, names
    polls = [s["attributes"]["cekura.poll.number"] for s in spans if s["name"].startswith("GET ")]
    assert sorted(polls) == [*range(1, DEFAULT_TRACED_POLLS + 1), 50]
    summary = next(s for s in spans if s["name"] == "polls")
    assert summary["attributes"]["cekura.poll.last"] == 49
    assert all(s["start_ns"] <= s["end_ns"] for s in spans)


def test_an_unsampled_producer_span_makes_no_spans(
    receiver: Receiver, traced_client: Client, traced_worker: dramatiq.Worker
) -> None:
    """Guarantee 2 (an unsampled job makes no spans at all) and 1 (the event still carries the traceparent).

    HELD: a job submitted inside an unsampled producer span (a provider sampling nothing), run to its end, and a
    second one cancelled by this process: both events carry unsampled traceparents (flags 02: random, not
    sampled, as this SDK sets them) of the producer's trace, and once the worker's spans are flushed (a sampled
    marker job's spans arrived) none has that trace id."""
    unsampled = TracerProvider(resource=Resource.create({SERVICE_NAME: "quiet"}), sampler=ALWAYS_OFF)
    with unsampled.get_tracer("quiet").start_as_current_span("not sampled") as span:
        ran = traced_client.submit(KIND, PARAMS)
        cancelled = traced_client.submit(KIND, PARAMS, deadline_s=60, job_id="unsampled-cancelled")
        trace_id = f"{span.get_span_context().trace_id:032x}"
    traced_client.cancel(cancelled)
    events = [wait_job(traced_client, job_id) for job_id in (ran, cancelled)]
    for event in events:
        carried = parse_traceparent(event["traceparent"])
        assert carried is not None and carried.trace_id == trace_id and not carried.sampled, event
    marker = wait_job(traced_client, traced_client.submit(KIND, PARAMS))
    flush()
    receiver.wait_for_span(parse_traceparent(marker["traceparent"]).trace_id, "send cekura:results")  # type: ignore[union-attr]
    assert receiver.trace(trace_id) == []
