"""W3C trace context as a job carries it: read at the edge (a request's `traceparent` and `tracestate`), kept in
the job's record, and written into its events.

No OpenTelemetry import here: the intake, the Python client and the CLI use this module with tracing off, and a
request's trace context is recorded whatever this process's tracing says (a worker with tracing on may run the
job). The job's own span id is fixed here, at submission, because every worker that runs one of the job's steps
parents its call spans on it and the result event carries it, long before the job span is recorded at its end.

The record's fields (`job_fields`): `traceparent`, the job span's own context `00-<trace id>-<job span id>-<flags>`
(what events carry and call spans hang from); `trace_parent`, the producer's span id (empty for a job that began
its own trace); `tracestate`, the producer's, as received; `trace_link`, the `traceparent` of the job a retry
retries. A malformed `traceparent` or `tracestate` is dropped with a log line, never a rejection.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import structlog

from worker.redact import redact

log = structlog.get_logger(__name__)

#: A version-00 `traceparent` as JSON Schema states it.
TRACEPARENT_PATTERN = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"

#: Any version's `traceparent`: a later version may append fields after the flags, which are ignored.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[ -~]*)?")

#: A `tracestate` list member: `key=value` (W3C Trace Context, 3.3.1): a simple key begins with a letter and has up
#: to 256 characters, a multi-tenant key is `<tenant>@<system>` (the tenant may begin with a digit).
_MEMBER = re.compile(
    r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
    r"=[ -+\--<>-~]{0,255}[!-+\--<>-~]"
)

#: The longest `tracestate` kept (W3C: at most 32 members; 512 bytes is what every vendor may rely on).
DEFAULT_MAX_TRACESTATE_CHARS = 512
DEFAULT_MAX_TRACESTATE_MEMBERS = 32

#: How much of a malformed value a log line quotes.
DEFAULT_QUOTE_CHARS = 64

#: Trace flags: sampled (W3C level 1), and the trace id's low 56 bits are random (level 2).
SAMPLED = 0x01
RANDOM_TRACE_ID = 0x02


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One span's W3C trace context, as lowercase hex."""

    trace_id: str
    span_id: str
    flags: str = "01"
    tracestate: str = ""

    @property
    def sampled(self) -> bool:
        return bool(int(self.flags, 16) & SAMPLED)

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse_traceparent(value: str, tracestate: str = "") -> TraceContext | None:
    """A `traceparent` header value as a context, or None when it is not one (W3C Trace Context, 3.2)."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceContext(trace_id, span_id, flags, tracestate)


def from_request(traceparent: Any, tracestate: Any = None) -> TraceContext | None:
    """The trace context a request carries, or None: a missing one silently, a malformed one with a log line (a
    request is never refused for its trace context). A malformed `tracestate` is dropped alone."""
    if traceparent is None:
        if tracestate is not None:
            log.warning("trace_context_ignored", reason="tracestate without traceparent")
        return None
    context = parse_traceparent(traceparent) if isinstance(traceparent, str) and len(traceparent) < 256 else None
    if context is None:
        log.warning("trace_context_ignored", reason="malformed traceparent", traceparent=_quote(traceparent))
        return None
    if tracestate is None or tracestate == "":
        return context
    state = _clean_tracestate(tracestate)
    if state is None:
        log.warning("trace_context_ignored", reason="malformed tracestate", tracestate=_quote(tracestate))
        return context
    return TraceContext(context.trace_id, context.span_id, context.flags, state)


def without_secrets(trace: TraceContext | None, secrets: tuple[str, ...]) -> TraceContext | None:
    """`trace` without its `tracestate` when that quotes a secret (this deployment's, or one of `secrets`, the
    job's own): it would be copied into every span and event of the job."""
    if trace is None or not trace.tracestate or redact(trace.tracestate, secrets) == trace.tracestate:
        return trace
    log.warning("trace_context_ignored", reason="tracestate quotes a secret")
    return TraceContext(trace.trace_id, trace.span_id, trace.flags)


def _clean_tracestate(value: Any) -> str | None:
    """A `tracestate` value with optional whitespace around its members removed, or None when it is malformed."""
    if not isinstance(value, str) or len(value) > DEFAULT_MAX_TRACESTATE_CHARS:
        return None
    members = [member.strip(" \t") for member in value.split(",")]
    members = [member for member in members if member]  # empty members are allowed, and dropped
    if len(members) > DEFAULT_MAX_TRACESTATE_MEMBERS or not all(_MEMBER.fullmatch(m) for m in members):
        return None
    keys = [member.partition("=")[0] for member in members]
    return ",".join(members) if len(set(keys)) == len(keys) else None


def _quote(value: Any) -> str:
    text = redact(value) if isinstance(value, str) else f"(a JSON {type(value).__name__})"  # masked before the cut
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate would fail the log line
    return text[:DEFAULT_QUOTE_CHARS] + ("..." if len(text) > DEFAULT_QUOTE_CHARS else "")


def new_span_id() -> str:
    """A random, non-zero 8-byte span id as hex."""
    while True:
        value = os.urandom(8).hex()
        if value != "0" * 16:
            return value


def new_trace_id() -> str:
    """A random, non-zero 16-byte trace id as hex (every bit random: W3C level 2's `random-trace-id`)."""
    while True:
        value = os.urandom(16).hex()
        if value != "0" * 32:
            return value


def job_fields(parent: TraceContext | None, *, root: TraceContext | None = None, link: str = "") -> dict[str, str]:
    """The job record's trace fields: a job span of its own under the producer's span `parent` (same trace, same
    flags), or the span `root` begins (a new trace, made by a process that traces); nothing when neither. `link`:
    the `traceparent` of the job a retry retries."""
    fields: dict[str, str] = {}
    if parent is not None:
        own = TraceContext(parent.trace_id, new_span_id(), parent.flags, parent.tracestate)
        fields = {"traceparent": own.traceparent, "trace_parent": parent.span_id}
        if own.tracestate:
            fields["tracestate"] = own.tracestate
    elif root is not None:
        fields = {"traceparent": root.traceparent}
    if link and parse_traceparent(link) is not None:
        fields["trace_link"] = link
    return fields


def log_ids(traceparent: str) -> dict[str, str]:
    """`trace_id` and `span_id` for a log line about the job whose span this is (nothing when there is none)."""
    context = parse_traceparent(traceparent) if traceparent else None
    return {"trace_id": context.trace_id, "span_id": context.span_id} if context else {}


def current() -> tuple[str | None, str | None]:
    """The calling code's current trace context as (`traceparent`, `tracestate`), through the OpenTelemetry API's
    global propagator (what the application configured: W3C trace context by default); (None, None) outside a
    span or without an SDK. Producers call this; the API is imported on first use."""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate")
