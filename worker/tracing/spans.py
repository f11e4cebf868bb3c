"""A job's spans: the scope a step's spans hang from, and the spans made when the job ends.

Every hook here runs only with tracing on (`worker.tracing.enabled`). A step `enter`s its job: the job span's
context becomes the parent of the calls it makes (`calls.py` reads it from `current()`), and its `trace_id` and
`span_id` are bound to every log line the step writes (the Dramatiq middleware clears them after the message). A
job submitted without trace context gets a new trace here, at its first step (`JobStore.adopt_trace`).

`ended()` makes, once the finish script reports that this call ended the job: the job span (its preset id, its
producer's span as parent, the Redis clock's submission and finish as start and end, a link to the job a retry
retries), the span that sums up the polls past the traced ones, and the publish span around the finish itself.
"""

from __future__ import annotations

import functools
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from worker.tracing import state
from worker.tracing.context import TraceContext, parse_traceparent

if TYPE_CHECKING:
    from actors.step import Step
    from worker.store.jobs import JobStore
    from worker.store.records import FinishTrace

#: The most characters of an error a span's status description carries (the event has it whole).
DEFAULT_DESCRIPTION_CHARS = 256

#: Jobs whose parsed context a process keeps (every step of a job parses the same `traceparent`).
DEFAULT_PARSED_JOBS = 4096

#: Outcomes whose job span is an error (a cancelled or waiting job is not).
ERROR_OUTCOMES = frozenset({"failed", "timed_out"})


@dataclass(frozen=True, slots=True)
class Scope:
    """The job a step runs for, as its spans see it."""

    job_id: str
    kind: str
    #: The job span as a parent (a non-recording span in a context).
    parent: Context
    sampled: bool
    #: The number the step's progress call would have (the job's polls so far + 1).
    poll: int


_scope: ContextVar[Scope | None] = ContextVar("cekura_trace_scope", default=None)


def current() -> Scope | None:
    """The job the calling step runs for (None outside a step, or for a job without trace context)."""
    return _scope.get()


def span_context(context: TraceContext, *, remote: bool = True) -> SpanContext:
    state = TraceState.from_header([context.tracestate]) if context.tracestate else None
    return SpanContext(
        int(context.trace_id, 16),
        int(context.span_id, 16),
        is_remote=remote,
        trace_flags=TraceFlags(int(context.flags, 16)),
        trace_state=state,
    )


@functools.lru_cache(maxsize=DEFAULT_PARSED_JOBS)
def _job_parent(traceparent: str, tracestate: str) -> tuple[TraceContext, Context] | None:
    """A job span's context, parsed, and as the parent of its children (both immutable: shared across threads)."""
    job = parse_traceparent(traceparent, tracestate) if traceparent else None
    if job is None:
        return None
    return job, trace_api.set_span_in_context(NonRecordingSpan(span_context(job)))


def _enter(job_id: str, kind: str, traceparent: str, tracestate: str, poll: int) -> None:
    parsed = _job_parent(traceparent, tracestate)
    if parsed is None:
        _scope.set(None)
        return
    job, parent = parsed
    structlog.contextvars.bind_contextvars(trace_id=job.trace_id, span_id=job.span_id)
    _scope.set(Scope(job_id, kind, parent, job.sampled, poll))


def enter(step: Step) -> None:
    """Start handling a claimed step of its job (`actors.step.make_step`)."""
    job = step.job
    traceparent = job.traceparent or adopt(step.rt.store, step.job_id, step.kind.name)
    _enter(step.job_id, step.kind.name, traceparent, job.tracestate, job.polls + 1)


def enter_job(store: JobStore, job_id: str, kind: str) -> None:
    """Start handling a message about a job that comes without its record (a remote cancel): read its context."""
    traceparent, tracestate = (value.decode() if value else "" for value in _read(store, job_id))
    _enter(job_id, kind, traceparent, tracestate, 0)


def _read(store: JobStore, job_id: str) -> list[Any]:
    try:
        values: list[Any] = store.client.hmget(store.job_key(job_id), "traceparent", "tracestate")
    except Exception:  # a key that holds something else: the call goes untraced, not unmade
        return [None, None]
    return values


def adopt(store: JobStore, job_id: str, kind: str) -> str:
    """A new trace for a job that has none (submitted by a producer that doesn't trace); the one it has if another
    attempt gave it one first."""
    return store.adopt_trace(job_id, state.active().new_root(kind).traceparent)


def note_advance(step: Step, fields: dict[str, Any]) -> None:
    """Record, in the step that records the first poll past the traced ones, when it ran: the start of the span
    that sums those polls up when the job ends."""
    if fields.get("polls") == state.DEFAULT_TRACED_POLLS + 1 and step.job.polls == state.DEFAULT_TRACED_POLLS:
        fields["trace_polls_ms"] = step.claim.now_ms


def _ns(ms: int) -> int:
    return ms * 1_000_000


def ended(
    trace: FinishTrace,
    job_id: str,
    kind: str,
    outcome: str,
    *,
    error: str,
    polls: int,
    published_ns: int,
    entry_id: str,
    bind_logs: bool = True,
) -> None:
    """Make the spans of a job this process just ended (`published_ns`: when its finish began, on this host);
    `bind_logs`: the caller handles a message, whose log lines (its `job_finished`) then name the job span."""
    parsed = _job_parent(trace.traceparent, trace.tracestate)  # the same parse every step of the job made
    if parsed is None or not parsed[0].sampled:
        return
    job, parent = parsed
    active = state.active()
    tracer = active.tracer
    attributes: dict[str, Any] = {
        "cekura.job.id": job_id,
        "cekura.job.kind": kind,
        "cekura.job.status": outcome,
        "cekura.status": trace.cekura_status,
        "cekura.poll.count": polls,
    }
    producer = parse_traceparent(f"00-{job.trace_id}-{trace.parent_span_id}-{job.flags}", job.tracestate)
    context = trace_api.set_span_in_context(NonRecordingSpan(span_context(producer))) if producer else None
    link = parse_traceparent(trace.link) if trace.link else None
    links = [Link(span_context(link), {"cekura.link": "retry_of"})] if link else []
    with active.ids.preset(int(job.trace_id, 16), int(job.span_id, 16)):
        span = tracer.start_span(
            f"job {kind}",
            context=context or Context(),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            # Hosts' clocks may disagree (a submission stamped ahead of the finish): never a negative duration.
            start_time=_ns(min(trace.submitted_ms or trace.finished_ms, trace.finished_ms)),
        )
    if outcome in ERROR_OUTCOMES:
        span.set_status(Status(StatusCode.ERROR, error[:DEFAULT_DESCRIPTION_CHARS]))
    elif outcome == "completed":
        span.set_status(Status(StatusCode.OK))
    span.end(end_time=_ns(trace.finished_ms))

    if trace.polls_from_ms and trace.polls_before > state.DEFAULT_TRACED_POLLS:
        first = state.DEFAULT_TRACED_POLLS + 1
        summary = tracer.start_span(
            "polls",
            context=parent,
            attributes={
                "cekura.poll.first": first,
                "cekura.poll.last": trace.polls_before,
                "cekura.poll.count": trace.polls_before - first + 1,
            },
            start_time=_ns(trace.polls_from_ms),
        )
        summary.end(end_time=_ns(max(trace.polls_from_ms, trace.updated_before_ms)))
    publish = tracer.start_span(
        "send cekura:results",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "redis",
            "messaging.operation.type": "send",
            "messaging.destination.name": active.settings.cekura_results_stream,
            "messaging.message.id": entry_id,
        },
        start_time=published_ns,
    )
    publish.end(end_time=time.time_ns())
    if bind_logs:
        structlog.contextvars.bind_contextvars(trace_id=job.trace_id, span_id=job.span_id)
