"""Job requests: the one validation path for the request stream, the Python client and the CLI.

A request is JSON: `{"kind", "params", "job_id"?, "deadline_s"?, "metadata"?}` to submit, or
`{"action": "cancel", "job_id"}` to cancel. Anything else raises `InvalidRequest` with a message that says
what is wrong and quotes no secret (validation errors name fields, never values).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from actors.kinds import KINDS, JobKind, Params
from config.settings import Settings
from worker.errors import InvalidRequest

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: The smallest deadline a request may ask for, in seconds.
DEFAULT_MIN_DEADLINE_S = 1.0

_SUBMIT_KEYS = frozenset({"kind", "params", "job_id", "deadline_s", "metadata"})
_CANCEL_KEYS = frozenset({"action", "job_id"})


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A validated submission."""

    kind: JobKind
    params: Params
    job_id: str
    deadline_s: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A validated cancellation."""

    job_id: str


def new_job_id() -> str:
    return uuid.uuid4().hex


def parse(
    raw: bytes | str | None, settings: Settings, *, default_job_id: str | None = None
) -> JobRequest | CancelRequest:
    """Validate one request-stream entry's `request` field; `default_job_id` names a job that gives no id."""
    if raw is None:
        raise InvalidRequest("entry has no 'request' field")
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if len(data) > settings.cekura_request_max_bytes:
        raise InvalidRequest(f"request is {len(data)} bytes, over the {settings.cekura_request_max_bytes}-byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"request is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except InvalidRequest:
        raise
    except RecursionError:
        raise InvalidRequest("request is nested too deeply") from None
    except ValueError as exc:
        raise InvalidRequest(f"request is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"request must be a JSON object, got {_json_type(value)}")
    for key, item in value.items():  # located like build() locates them: "params.x", not "request.params.x"
        _check_text(key, "request")
        _check_text(item, key if key.isprintable() else "request")
    if "action" in value:
        return _parse_action(value)
    unknown = sorted(set(value) - _SUBMIT_KEYS)
    if unknown:
        raise InvalidRequest(f"unknown request field(s): {', '.join(map(repr, unknown))}")
    if "kind" not in value:
        raise InvalidRequest("request needs 'kind' (or 'action')")
    return build(
        value["kind"],
        value.get("params", {}),
        job_id=value.get("job_id", default_job_id),
        metadata=value.get("metadata"),
        deadline_s=value.get("deadline_s"),
        settings=settings,
    )


def build(
    kind: Any,
    params: Any,
    *,
    job_id: Any = None,
    metadata: Any = None,
    deadline_s: Any = None,
    settings: Settings,
) -> JobRequest:
    """Validate a submission given as Python values (the client's and the CLI's entry point)."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise InvalidRequest(f"unknown kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    job_kind = KINDS[kind]
    if not isinstance(params, Mapping):
        raise InvalidRequest(f"params must be a JSON object, got {_json_type(params)}")
    _check_text(params, "params")
    try:
        model = job_kind.validate(params)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid params for {kind}: {_describe(exc)}") from None
    if job_id is None:
        job_id = new_job_id()
    else:
        check_job_id(job_id)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, Mapping):
        raise InvalidRequest(f"metadata must be a JSON object, got {_json_type(metadata)}")
    else:
        _check_text(metadata, "metadata")
    deadline = _deadline(deadline_s, settings)
    _check_size_and_numbers(kind, params, job_id, deadline_s, metadata, settings)
    return JobRequest(job_kind, model, job_id, deadline, dict(metadata))


def check_job_id(job_id: Any) -> str:
    """Return `job_id` if it is 1-128 characters of A-Za-z0-9._:- else raise `InvalidRequest`."""
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise InvalidRequest("job_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return job_id


def _parse_action(value: dict[str, Any]) -> CancelRequest:
    action = value["action"]
    if action != "cancel":
        raise InvalidRequest(f"unknown action {action!r}; the only action is 'cancel'")
    unknown = sorted(set(value) - _CANCEL_KEYS)
    if unknown:
        raise InvalidRequest(f"unknown field(s) for cancel: {', '.join(map(repr, unknown))}")
    if "job_id" not in value:
        raise InvalidRequest("cancel needs 'job_id'")
    return CancelRequest(check_job_id(value["job_id"]))


def _deadline(value: Any, settings: Settings) -> float:
    if value is None:
        return settings.cekura_job_deadline_s
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest("deadline_s must be a number of seconds")
    limit = settings.cekura_job_deadline_max_s
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest("deadline_s must be a number of seconds")
    if not DEFAULT_MIN_DEADLINE_S <= value <= limit:  # compares ints of any size without converting them
        raise InvalidRequest(f"deadline_s must be between {DEFAULT_MIN_DEADLINE_S:g} and {limit:g} seconds")
    return float(value)


def _check_size_and_numbers(
    kind: str, params: Any, job_id: str, deadline_s: Any, metadata: Any, settings: Settings
) -> None:
    """What the stream checks on the raw entry, checked on the request as it would be sent: JSON-only numbers
    (no NaN or Infinity) and the size limit, with the stream's messages."""
    request = {"kind": kind, "params": params, "job_id": job_id, "deadline_s": deadline_s, "metadata": metadata}
    try:
        data = json.dumps(request, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except ValueError:
        raise InvalidRequest("request is not valid JSON: NaN or Infinity is not a JSON number") from None
    except (TypeError, RecursionError) as exc:
        raise InvalidRequest(f"request is not JSON-serialisable: {exc}") from None
    if len(data) > settings.cekura_request_max_bytes:
        raise InvalidRequest(f"request is {len(data)} bytes, over the {settings.cekura_request_max_bytes}-byte limit")


def _check_text(value: Any, where: str) -> None:
    """Refuse NUL characters and lone surrogates anywhere in keys or string values."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidRequest(f"{where} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"{where} contains a lone surrogate (invalid Unicode)") from None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_text(key, where)
            _check_text(item, f"{where}.{key}" if isinstance(key, str) and key.isprintable() else where)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_text(item, where)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in error["loc"]) or "params"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{location}: {message}")
    return "; ".join(problems)


def _reject_constant(name: str) -> Any:
    raise InvalidRequest(f"request is not valid JSON: {name} is not a JSON number")


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )
