"""Job requests: the one validation path for the request stream, the Python client and the CLI.

A request is JSON: `{"kind", "params", "job_id"?, "deadline_s"?, "metadata"?}` to submit, or
`{"action": "cancel", "job_id"}` to cancel, or `{"action": "answer", "job_id", "answer"}` to answer the question a
waiting job asked. Anything else raises `InvalidRequest` with a message that says
what is wrong and quotes no secret (validation errors name fields, never values). Any request may also carry W3C
trace context, `traceparent` and `tracestate`: a submission's job continues that trace (`worker.tracing`); a
malformed one is dropped with a log line, never a reason to refuse the request.

A request's values, and an answer that is JSON, are decoded and walked by the rules in `actors/kinds/values.py`
(bounded nesting, JSON-only numbers, no NUL or lone surrogate): iterative and bounded, so no input can exhaust the
stack or reach the depth at which pydantic's serializer gives up (255) after the request was accepted; and nothing
over `CEKURA_REQUEST_MAX_BYTES` is parsed. Once its job is known, an answer is also checked by the job's kind with
the very code that builds the body it is delivered in (`JobKind.answer_request`), so an answer accepted can be sent.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from actors.kinds import KINDS, JobKind, Params
from actors.kinds.values import check_values, loads
from config.settings import Settings
from worker.errors import InvalidRequest
from worker.redact import redact
from worker.tracing.context import TraceContext, from_request, without_secrets

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: The smallest deadline a request may ask for, in seconds.
DEFAULT_MIN_DEADLINE_S = 1.0

#: W3C trace context a request of any kind may carry (`worker.tracing.context`).
TRACE_KEYS = frozenset({"traceparent", "tracestate"})
_SUBMIT_KEYS = frozenset({"kind", "params", "job_id", "deadline_s", "metadata"}) | TRACE_KEYS
_CANCEL_KEYS = frozenset({"action", "job_id"}) | TRACE_KEYS
_ANSWER_KEYS = frozenset({"action", "job_id", "answer"}) | TRACE_KEYS

#: The longest answer accepted (Cekura's `generate-clarify-answer` takes up to 10,000 characters).
DEFAULT_MAX_ANSWER_CHARS = 10_000


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A validated submission."""

    kind: JobKind
    params: Params
    job_id: str
    deadline_s: float
    #: The params as recorded: JSON-ready, secrets left out (serialized once here, where a failure is a rejection).
    public_params: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The producer's trace context, which the job continues (None: it sent none, or a malformed one).
    trace: TraceContext | None = None


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A validated cancellation."""

    job_id: str


@dataclass(frozen=True, slots=True)
class AnswerRequest:
    """A validated answer to a waiting job's question."""

    job_id: str
    answer: str


def new_job_id() -> str:
    return uuid.uuid4().hex


def parse(
    raw: bytes | str | None, settings: Settings, *, default_job_id: str | None = None
) -> JobRequest | CancelRequest | AnswerRequest:
    """Validate one request-stream entry's `request` field; `default_job_id` names a job that gives no id."""
    if raw is None:
        raise InvalidRequest("entry has no 'request' field")
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    check_size(len(data), settings)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"request is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = loads(text, "request")
    except ValueError as exc:
        raise InvalidRequest(f"request is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"request must be a JSON object, got {_json_type(value)}")
    roots: list[tuple[Any, str]] = []
    for key, item in value.items():  # located like build() locates them: "params.x", not "request.params.x"
        roots += [(key, "request")]
        if key not in TRACE_KEYS:  # trace context is never a reason to refuse: from_request drops a bad one
            roots += [(item, key if key.isprintable() else "request")]
    _check_values(roots, settings)
    if "action" in value:
        return _parse_action(value, settings)
    unknown = sorted(set(value) - _SUBMIT_KEYS)
    if unknown:
        raise InvalidRequest(f"unknown request field(s): {', '.join(map(repr, unknown))}")
    if "kind" not in value:
        raise InvalidRequest("request needs 'kind' (or 'action')")
    return _build(
        value["kind"],
        value.get("params", {}),
        job_id=value.get("job_id", default_job_id),
        metadata=value.get("metadata"),
        deadline_s=value.get("deadline_s"),
        settings=settings,
        measured=True,  # the entry's own bytes were measured above, and JSON text holds no NaN
        trace=from_request(value.get("traceparent"), value.get("tracestate")),
    )


def build(
    kind: Any,
    params: Any,
    *,
    job_id: Any = None,
    metadata: Any = None,
    deadline_s: Any = None,
    settings: Settings,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> JobRequest:
    """Validate a submission given as Python values (the client's and the CLI's entry point); `traceparent` and
    `tracestate`: the producer's trace context, as the request stream takes it."""
    trace = from_request(traceparent, tracestate)
    # Only what is kept counts as sent: a dropped value is never a reason to refuse (as on the stream).
    sent = {"traceparent": traceparent} if trace is not None and traceparent is not None else {}
    if trace is not None and trace.tracestate and tracestate is not None:
        sent["tracestate"] = tracestate
    return _build(
        kind,
        params,
        job_id=job_id,
        metadata=metadata,
        deadline_s=deadline_s,
        settings=settings,
        measured=False,
        trace=trace,
        sent_trace=sent,
    )


def check_size(size: int, settings: Settings) -> None:
    """Refuse a request of `size` bytes over `CEKURA_REQUEST_MAX_BYTES` (the stream's reader measures entries it
    doesn't fetch with this too)."""
    if size > settings.cekura_request_max_bytes:
        raise InvalidRequest(f"request is {size} bytes, over the {settings.cekura_request_max_bytes}-byte limit")


def _build(
    kind: Any,
    params: Any,
    *,
    job_id: Any,
    metadata: Any,
    deadline_s: Any,
    settings: Settings,
    measured: bool,
    trace: TraceContext | None = None,
    sent_trace: dict[str, str] | None = None,
) -> JobRequest:
    """The checks both entry points share; `measured` when the request came as JSON text whose size was checked
    (measuring a re-serialisation instead would count what the sender never sent, such as a generated job id)."""
    if isinstance(kind, str):
        kind = str.__str__(kind)  # a plain str: a subclass's __hash__, __eq__ or __repr__ could raise
    if not isinstance(kind, str) or kind not in KINDS:
        raise InvalidRequest(f"unknown kind {_show_kind(kind)}; known kinds: {', '.join(sorted(KINDS))}")
    job_kind = KINDS[kind]
    if not isinstance(params, Mapping):
        raise InvalidRequest(f"params must be a JSON object, got {_json_type(params)}")
    _check_values([(params, "params")], settings)
    try:
        model = job_kind.validate(params)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid params for {kind}: {_describe(exc)}") from None
    given_job_id, given_metadata = job_id, metadata
    secrets = job_kind.secret_values(job_kind.secrets(model))
    if job_id is None:
        job_id = new_job_id()
    else:
        check_job_id(job_id)
        if redact(job_id, secrets) != job_id:  # it would be in every log line, event and span of the job
            raise InvalidRequest("job_id quotes a secret (the API key or one of the job's provider secrets)")
    trace = without_secrets(trace, secrets)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, Mapping):
        raise InvalidRequest(f"metadata must be a JSON object, got {_json_type(metadata)}")
    else:
        _check_values([(metadata, "metadata")], settings)
    deadline = _deadline(deadline_s, settings, job_kind)
    if not measured:
        given = {"job_id": given_job_id, "deadline_s": deadline_s, "metadata": given_metadata}
        sent = {name: value for name, value in given.items() if value is not None}
        _check_size_and_numbers({"kind": kind, "params": params, **sent, **(sent_trace or {})}, settings)
    try:
        public = job_kind.public_params(model)
    except (TypeError, ValueError) as exc:  # pydantic-core's serializer: the checks above should leave it nothing
        raise InvalidRequest(f"invalid params for {kind}: {exc}") from None
    return JobRequest(job_kind, model, job_id, deadline, public, dict(metadata), trace)


def check_job_id(job_id: Any) -> str:
    """Return `job_id` if it is 1-128 characters of A-Za-z0-9._:- else raise `InvalidRequest`."""
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise InvalidRequest("job_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return job_id


def _parse_action(value: dict[str, Any], settings: Settings) -> CancelRequest | AnswerRequest:
    action = value["action"]
    if action not in ("cancel", "answer"):
        shown = redact(repr(action))[:60] if isinstance(action, str) else f"of type {_json_type(action)}"
        raise InvalidRequest(f"unknown action {shown}; the actions are 'cancel' and 'answer'")
    unknown = sorted(set(value) - (_CANCEL_KEYS if action == "cancel" else _ANSWER_KEYS))
    if unknown:
        raise InvalidRequest(f"unknown field(s) for {action}: {', '.join(redact(repr(name))[:60] for name in unknown)}")
    if "job_id" not in value:
        raise InvalidRequest(f"{action} needs 'job_id'")
    job_id = check_job_id(value["job_id"])
    if action == "cancel":
        return CancelRequest(job_id)
    return AnswerRequest(job_id, check_answer(value.get("answer"), settings))


def check_answer(answer: Any, settings: Settings) -> str:
    """An answer's text: a non-blank string of at most `DEFAULT_MAX_ANSWER_CHARS` characters, holding nothing a
    request's values may not (a NUL, an unpaired surrogate), whichever way it came. Whether the job's kind can send
    it is checked once the job is known (`submission.answer`, with `JobKind.answer_request`)."""
    if not isinstance(answer, str) or not answer.strip():
        raise InvalidRequest("answer needs 'answer': the text of the answer, a non-empty string")
    if len(answer) > DEFAULT_MAX_ANSWER_CHARS:
        raise InvalidRequest(f"answer is {len(answer)} characters; the most Cekura takes is {DEFAULT_MAX_ANSWER_CHARS}")
    _check_values([(answer, "answer")], settings)
    return answer


def _deadline(value: Any, settings: Settings, kind: JobKind) -> float:
    if value is None:  # the kind's own default (an evaluator run takes up to an hour), else CEKURA_JOB_DEADLINE_S
        if kind.default_deadline_s is not None:
            return min(kind.default_deadline_s, settings.cekura_job_deadline_max_s)
        return settings.cekura_job_deadline_s
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest("deadline_s must be a number of seconds")
    limit = settings.cekura_job_deadline_max_s
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest("deadline_s must be a number of seconds")
    if not DEFAULT_MIN_DEADLINE_S <= value <= limit:  # compares ints of any size without converting them
        raise InvalidRequest(f"deadline_s must be between {DEFAULT_MIN_DEADLINE_S:g} and {limit:g} seconds")
    return float(value)


def _check_size_and_numbers(request: dict[str, Any], settings: Settings) -> None:
    """What the stream checks on the raw entry, checked on a Python request as it would be sent: JSON-only numbers
    (no NaN or Infinity) and the size limit, with the stream's messages. `request` holds only the fields the caller
    gave (a generated job id is not sent), serialised compactly with non-ASCII text as UTF-8, the way a producer
    would send it: anything else counts bytes the stream would never see."""
    try:
        text = json.dumps(request, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("request is not valid JSON: text holds a lone surrogate (not Unicode)") from None
    except ValueError:
        raise InvalidRequest("request is not valid JSON: NaN or Infinity is not a JSON number") from None
    except (TypeError, RecursionError) as exc:
        raise InvalidRequest(f"request is not JSON-serialisable: {exc}") from None
    check_size(len(data), settings)


def _check_values(roots: Iterable[tuple[Any, str]], settings: Settings) -> None:
    """The value rules (`values.check_values`), bounded by the size limit: each value takes at least one byte."""
    check_values(roots, max_values=settings.cekura_request_max_bytes)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in error["loc"]) or "params"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{location}: {message}")
    return "; ".join(problems)


def _show_kind(kind: Any) -> str:
    """A kind for an error message: quoted when it is text, written out when it is a small JSON scalar, else named
    by its type (the repr of an arbitrary object, or the digits of a huge int, may raise)."""
    if isinstance(kind, str):
        return str.__repr__(kind)
    if kind is None or type(kind) in (bool, float) or (type(kind) is int and abs(kind) < 10**18):
        return json.dumps(kind)
    return f"(got {_json_type(kind)})"


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )
