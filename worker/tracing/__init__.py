"""OpenTelemetry traces of a job's life, from the producer's request to the consumer's event; off unless configured.

A job's trace context is fixed when it is submitted (`context.job_fields`): its trace id (the producer's, or a new
one), the producer's span id, and a span id of the job's own, all in the job's record. Every worker that runs one
of the job's steps parents its spans on that id: the start call, each poll (the first `DEFAULT_TRACED_POLLS`, then
only polls that end the job or fail, the others summed up in one span), answers, cancels and the publish. The job
span itself is recorded only when the job ends, by whichever worker ends it, with the id fixed at submission and
its start and end from the Redis clock (`submitted_ms`, the finish's time), so no span is held open across
processes and a worker killed mid-job still leaves exactly one job span. Events carry the job span's `traceparent`.

When off (the default), `enabled` is False, nothing of the SDK's tracing is imported, the Cekura client is the
plain one, and every hook in the actors is behind `if tracing.enabled:`: the poll path does no tracing work at all
(the middleware clears the thread's tracing scope after each message, on or off: `leave`).
`setup()` turns it on from the settings (`Settings.tracing_on`); the pieces are `context.py` (W3C trace context,
no OpenTelemetry import), `provider.py` (SDK, OTLP exporter, spans recorded whole), `calls.py` (Cekura call spans),
`spans.py` (a step's context, the job span and its end) and `state.py` (the running setup).
"""

from __future__ import annotations

import atexit
from types import ModuleType
from typing import TYPE_CHECKING, Any

from worker.tracing import state
from worker.tracing.context import TraceContext, from_request, job_fields, log_ids, parse_traceparent
from worker.tracing.state import DEFAULT_TRACED_POLLS

if TYPE_CHECKING:
    from actors.step import Step
    from config.settings import Settings
    from worker.store.jobs import JobStore
    from worker.store.records import FinishTrace
    from worker.tracing.provider import Tracing

__all__ = [
    "DEFAULT_TRACED_POLLS",
    "TraceContext",
    "active",
    "enabled",
    "ended",
    "enter",
    "enter_job",
    "from_request",
    "job_fields",
    "leave",
    "log_ids",
    "new_root",
    "note_advance",
    "parse_traceparent",
    "setup",
    "shutdown",
]

#: Whether this process traces (decided by `setup()`); read at every hook, so it costs one global lookup when off.
enabled = False

_exit_registered = False

#: `worker.tracing.spans`, once `setup()` has imported it (an import statement in a hook would go through the import
#: machinery at every call: a few us, eleven times a job).
_spans: ModuleType | None = None


def setup(settings: Settings) -> None:
    """Trace as `settings` say (replacing any earlier setup of this process, whose spans are flushed first)."""
    global enabled, _exit_registered, _spans
    shutdown()
    if settings.tracing_on:
        from worker.tracing import spans
        from worker.tracing.provider import Tracing

        state.current = Tracing(settings)
        spans.forget()  # what the last setup's sampler decided
        _spans = spans
        enabled = True
        if not _exit_registered:  # a worker process's spans are flushed when it exits (bounded: see `shutdown`)
            atexit.register(shutdown)
            _exit_registered = True


def shutdown() -> None:
    """Export what is buffered and stop tracing (at a worker process's end, or before a new setup)."""
    global enabled
    enabled, previous, state.current = False, state.current, None
    if previous is not None:
        previous.shutdown()


def active() -> Tracing:
    """The running setup; only called behind `enabled`."""
    return state.active()


# The hooks, each called only behind `if tracing.enabled:` (so after `setup()`, which imported `_spans`), except
# `leave`, which the Dramatiq middleware calls after every message.


def enter(step: Step) -> None:
    """A claimed step of a job begins: its spans hang from the job span, its log lines name it."""
    assert _spans is not None
    _spans.enter(step)


def leave() -> None:
    """A message is done: its thread's next calls and log lines belong to no job until a step `enter`s one. Called
    after every message, tracing on or off: a message that began while tracing was on may end after a `shutdown()`
    (and a later `setup()`), and its job's ids must not stay on the thread's next lines."""
    state.scope.set(None)


def enter_job(store: JobStore, job_id: str, kind: str) -> None:
    """A message about a job that carries no record (a remote cancel) begins: as `enter`, reading the job's context."""
    assert _spans is not None
    _spans.enter_job(store, job_id, kind)


def note_advance(step: Step, fields: dict[str, Any]) -> None:
    """A step records itself: note when the first poll past the traced ones ran (see `spans.note_advance`)."""
    assert _spans is not None
    _spans.note_advance(step, fields)


def new_root(kind: str) -> TraceContext:
    """The trace context of a job submitted without one, begun by this process."""
    return active().new_root(kind)


def ended(trace: FinishTrace | None, job_id: str, kind: str, outcome: str, **details: Any) -> None:
    """This process ended a job: make its spans (nothing for a job without trace context); `spans.ended`."""
    if trace is None:
        return
    assert _spans is not None
    _spans.ended(trace, job_id, kind, outcome, **details)
