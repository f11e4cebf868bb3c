"""A job's spans: the scope a step's spans hang from, and the spans made when the job ends.

Every hook here runs only with tracing on (`worker.tracing.enabled`). A step `enter`s its job: the job span's
context becomes the parent of the calls it makes (`calls.py` reads it from `state.scope`), and its `trace_id` and
`span_id` are bound to every log line the step writes (the Dramatiq middleware clears them after the message). A
job submitted without trace context gets a new trace here, at its first step (`JobStore.adopt_trace`).

`ended()` makes, once the finish script reports that this call ended the job: the job span (the id fixed at
submission, its producer's span as parent, the Redis clock's submission and finish as start and end, a link to the
job a retry retries), the span that sums up the polls past the traced ones, and the publish span around the finish
itself.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import structlog
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from worker.tracing import state
from worker.tracing.context import TraceContext, parse_traceparent
from worker.tracing.provider import UNSET

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


class Scope(NamedTuple):
    """The job a step runs for, as its spans see it (a tuple: made at every step, five times faster than a frozen
    dataclass)."""

    job_id: str
    kind: str
    #: The job span's context: the parent of the step's spans.
    parent: SpanContext
    #: Whether the job's spans are recorded (`Tracing.samples`).
    sampled: bool
    #: The number the step's progress call would have (the job's polls so far + 1).
    poll: int
    #: The job span's ids as its log lines carry them (hex).
    trace_id: str
    span_id: str


_scope = state.scope


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
def _job(traceparent: str, tracestate: str, kind: str) -> tuple[TraceContext, SpanContext, bool] | None:
    """A job span's context, parsed and as its children's parent, and whether the job's spans are recorded (all
    immutable: shared across threads; `forget()` empties the cache when a new setup brings a new sampler)."""
    job = parse_traceparent(traceparent, tracestate) if traceparent else None
    if job is None:
        return None
    parent = span_context(job)
    return job, parent, state.active().samples(parent, f"job {kind}")


def forget() -> None:
    """Drop what was cached under an earlier setup (`worker.tracing.setup`)."""
    _job.cache_clear()


def _enter(job_id: str, kind: str, traceparent: str, tracestate: str, poll: int) -> None:
    parsed = _job(traceparent, tracestate, kind)
    if parsed is None:
        _scope.set(None)
        return
    job, parent, sampled = parsed
    _scope.set(Scope(job_id, kind, parent, sampled, poll, job.trace_id, job.span_id))  # (and so its log lines' ids)


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
    parsed = _job(trace.traceparent, trace.tracestate, kind)  # the same parse every step of the job made
    if parsed is None:
        return
    job, parent, sampled = parsed
    scope = _scope.get()
    if bind_logs and (scope is None or scope.job_id != job_id):  # (a step of the job made them current already)
        structlog.contextvars.bind_contextvars(trace_id=job.trace_id, span_id=job.span_id)
    if not sampled:
        return
    active = state.active()
    attributes: dict[str, Any] = {
        "cekura.job.id": job_id,
        "cekura.job.kind": kind,
        "cekura.job.status": outcome,
        "cekura.status": trace.cekura_status[:DEFAULT_DESCRIPTION_CHARS],
        "cekura.poll.count": polls,
    }
    producer = parse_traceparent(f"00-{job.trace_id}-{trace.parent_span_id}-{job.flags}", job.tracestate)
    link = parse_traceparent(trace.link) if trace.link else None
    if outcome in ERROR_OUTCOMES:
        status = Status(StatusCode.ERROR, error[:DEFAULT_DESCRIPTION_CHARS])
    else:
        status = Status(StatusCode.OK) if outcome == "completed" else UNSET
    active.record(
        f"job {kind}",
        span_context(job, remote=False),  # the id fixed at submission, which every child names as its parent
        span_context(producer) if producer else None,  # none: the job began its trace
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        # Hosts' clocks may disagree (a submission stamped ahead of the finish): never a negative duration.
        start_ns=_ns(min(trace.submitted_ms or trace.finished_ms, trace.finished_ms)),
        end_ns=_ns(trace.finished_ms),
        status=status,
        links=[Link(span_context(link), {"cekura.link": "retry_of"})] if link else (),
    )
    if trace.polls_from_ms and trace.polls_before > state.DEFAULT_TRACED_POLLS:
        first = state.DEFAULT_TRACED_POLLS + 1
        active.record(
            "polls",
            active.child(parent),
            parent,
            kind=SpanKind.INTERNAL,
            attributes={
                "cekura.poll.first": first,
                "cekura.poll.last": trace.polls_before,
                "cekura.poll.count": trace.polls_before - first + 1,
            },
            start_ns=_ns(trace.polls_from_ms),
            end_ns=_ns(trace.updated_before_ms),
        )
    active.record(
        "send cekura:results",
        active.child(parent),
        parent,
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "redis",
            "messaging.operation.type": "send",
            "messaging.destination.name": active.settings.cekura_results_stream,
            "messaging.message.id": entry_id,
        },
        start_ns=published_ns,
        end_ns=time.time_ns(),
    )
