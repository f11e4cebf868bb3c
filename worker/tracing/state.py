"""This process's tracing setup, for the modules of `worker.tracing` (the package's `enabled` flag is the switch
the hooks read; this is what they use once it is on)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.tracing.provider import Tracing

#: Polls of a job that get a span each; past them only a poll that ends the job, asks a question or fails does,
#: the rest are summed up in one span when the job ends (a 3-hour evaluator run polled every 30 s makes 7 spans,
#: not 400). Two show how an operation got going (its first answer, and usually the move to running). A job of 10
#: polls makes 7 spans, and tracing adds about 1 ms to the 7 ms of CPU its steps take at saturation (README: "What it
#: costs").
DEFAULT_TRACED_POLLS = 2

#: The running setup (None while tracing is off).
current: Tracing | None = None

#: The job the calling thread's step runs for (a `spans.Scope`; None outside a step or for a job without trace
#: context): its calls' parent, and the `trace_id` and `span_id` of its log lines (`worker.runtime.logging`).
scope: ContextVar[Any] = ContextVar("cekura_trace_scope", default=None)


def active() -> Tracing:
    """The running setup; only called with tracing on."""
    if current is None:
        raise RuntimeError("tracing is off in this process")
    return current
