"""JSON Schemas (draft 2020-12) of the three streams' entries, generated from the models the worker validates with.

The request schema is built from each kind's params model (`actors/kinds/`) and the rules of
`worker/intake/requests.py` (job id pattern, deadline bounds from the `Settings` defaults); the result and progress
schemas from the small models below, which mirror what `finish.lua`, `reject.lua` and `advance.lua` write. The
generated files are committed twice: beside this module, so an installed worker ships them
(`importlib.resources.files("worker.schemas")`), and in the repository's `schemas/`, next to `asyncapi.yaml`,
for producers and consumers in other languages. `python -m worker.schemas` rewrites both; `--check` only
compares, and `tests/intake/test_event_schemas.py` fails when they drift.

Building needs pydantic only. Some request rules no JSON Schema can state (the byte size limit, nesting depth, NUL
characters and lone surrogates anywhere, an integer that must not be written 5.0); the test lists them with reasons.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from actors.kinds import KINDS, Outcome, Params
from config.settings import Settings
from worker.intake.requests import DEFAULT_MIN_DEADLINE_S, JOB_ID_PATTERN
from worker.tracing.context import DEFAULT_MAX_TRACESTATE_CHARS, TRACEPARENT_PATTERN

#: The JSON Schema dialect of every generated schema.
DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: Where the generated files ship inside the package.
PACKAGE_DIR = Path(__file__).parent

#: The repository's copy, next to `asyncapi.yaml` (present only in a checkout).
REPO_DIR = PACKAGE_DIR.parents[1] / "schemas"

#: The file each schema is written to, by name.
FILES = {"request": "request.schema.json", "result": "result.schema.json", "progress": "progress.schema.json"}

#: A job id as JSON Schema states it: `JOB_ID_PATTERN` (used with `fullmatch`), anchored.
JOB_ID = f"^{JOB_ID_PATTERN.pattern}$"
#: A Redis stream entry id.
ENTRY_ID = r"^[0-9]+-[0-9]+$"
#: A time as the scripts write it (`iso()` in `_now.lua`): ISO 8601 UTC with milliseconds.
ISO_MS = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"
#: A count written as decimal digits.
DIGITS = r"^[0-9]+$"

_STRICT = ConfigDict(extra="forbid")
if TYPE_CHECKING:  # Literals built at run time from the registry and the outcomes; plain text to a type checker
    _KIND = str
    _JOB_STATUS = str
else:
    _KIND = Literal[tuple(sorted(KINDS))]
    _JOB_STATUS = Literal[tuple(o.value for o in Outcome if o is not Outcome.REJECTED)]


def _json_text(description: str, schema: dict[str, Any] | None = None) -> Any:
    """A string field holding JSON text (`contentSchema`, when given, describes the decoded value)."""
    extra: dict[str, Any] = {"contentMediaType": "application/json"}
    if schema is not None:
        extra["contentSchema"] = schema
    return Field(description=description, json_schema_extra=extra)


# -- requests -----------------------------------------------------------------------------------------------------


#: The W3C trace context of the producer's span, as a request may carry it.
_TRACEPARENT_IN = (
    "W3C trace context of the producer's span (version 00): the job continues that trace. A malformed value is "
    "ignored, with a log line, never a reason to refuse the request."
)
_TRACESTATE_IN = "W3C tracestate, kept with the traceparent (at most 512 characters; a malformed one is ignored)."


class _RequestTrace(BaseModel):
    """Trace context, which every request may carry (a submission's job continues it; a cancel or answer accepts
    it)."""

    traceparent: str | None = Field(None, pattern=TRACEPARENT_PATTERN, description=_TRACEPARENT_IN)
    tracestate: str | None = Field(None, max_length=DEFAULT_MAX_TRACESTATE_CHARS, description=_TRACESTATE_IN)


def _trace_fields() -> dict[str, Any]:
    """`_RequestTrace`'s fields, for a submission model made with `create_model`."""
    return {name: (info.annotation, info) for name, info in _RequestTrace.model_fields.items()}


class _Cancel(BaseModel):
    """A cancel's own fields (`CancelRequest` adds trace context)."""

    model_config = ConfigDict(extra="forbid", title="cancel")
    action: Literal["cancel"]
    job_id: Annotated[str, Field(pattern=JOB_ID, description="The job to cancel.")]


class CancelRequest(_RequestTrace, _Cancel):
    """Cancel a job: it ends `cancelled` at once; a finished or unknown job is left as it is."""


class _Answer(BaseModel):
    """An answer's own fields (`AnswerRequest` adds trace context)."""

    model_config = ConfigDict(extra="forbid", title="answer")
    action: Literal["answer"]
    job_id: Annotated[str, Field(pattern=JOB_ID, description="The waiting job.")]
    answer: Annotated[str, Field(min_length=1, max_length=10_000, description="The answer's text.")]


class AnswerRequest(_RequestTrace, _Answer):
    """Answer the question a waiting job asked (its progress event with `state` `waiting` carries it): the worker
    sends the answer to Cekura and polls on. A job that is not waiting, or already has an answer, refuses it."""


def _submit_model(name: str, params: type[Params]) -> type[BaseModel]:
    """The submission of one kind: its params model under `params`, and the fields every kind shares. `params` may
    be left out only when the kind requires none of them (the worker reads a missing `params` as `{}`)."""
    deadline = Settings.model_fields["cekura_job_deadline_s"].default
    deadline_max = Settings.model_fields["cekura_job_deadline_max_s"].default
    needs_params = any(field.is_required() for field in params.model_fields.values())
    fields: dict[str, Any] = {
        "kind": (Literal[name], Field(description="The job kind.")),
        "params": (params, ... if needs_params else Field(default_factory=dict, description="The kind's params.")),
        "job_id": (
            Annotated[str, Field(pattern=JOB_ID)] | None,
            Field(None, description="The idempotency key; generated when absent or null."),
        ),
        "deadline_s": (
            Annotated[float, Field(ge=DEFAULT_MIN_DEADLINE_S, le=deadline_max)] | None,
            Field(
                None,
                description=f"Seconds until the job ends timed_out; absent or null means CEKURA_JOB_DEADLINE_S "
                f"({deadline:g} by default). The maximum is CEKURA_JOB_DEADLINE_MAX_S's default; a deployment may "
                "set it lower.",
            ),
        ),
        "metadata": (dict[str, Any] | None, Field(None, description="Echoed in the result event.")),
        **_trace_fields(),
    }
    config = ConfigDict(extra="forbid", title=f"submit {name}")
    model_name = "Submit" + params.__name__.removesuffix("Params")
    model: type[BaseModel] = create_model(model_name, __config__=config, __doc__=f"Submit a `{name}` job.", **fields)
    return model


def request_schema() -> dict[str, Any]:
    """The JSON text in the `request` field of a request-stream entry: a submission of one kind, or a cancel."""
    submits = [_submit_model(name, KINDS[name].params) for name in sorted(KINDS)]
    submit = Union[tuple(submits)]  # type: ignore[valid-type]  # noqa: UP007  # a union built from the registry
    request: Any = Annotated[submit, Field(discriminator="kind")] | CancelRequest | AnswerRequest
    schema = _exclusive(TypeAdapter(request).json_schema())
    return {
        "$schema": DIALECT,
        "title": "cekura-worker request",
        "description": "The JSON text of the one field, `request`, of an entry XADDed to the request stream "
        "(CEKURA_REQUESTS_STREAM, default cekura:requests).",
        **schema,
    }


# -- results and progress -----------------------------------------------------------------------------------------


class _EventTrace(BaseModel):
    """The trace context a job's events carry when the job has one (result and progress events alike)."""

    traceparent: str | None = Field(
        None,
        pattern=TRACEPARENT_PATTERN,
        description="The job span's W3C trace context (version 00), present only when the job has trace context: "
        "a consumer continues the trace from it.",
    )
    tracestate: str | None = Field(
        None,
        max_length=DEFAULT_MAX_TRACESTATE_CHARS,
        description="The producer's W3C tracestate as it sent it; present only when it sent one.",
    )


class _ResultFields(BaseModel):
    """The fields every result event has, in `RESULT_FIELDS` order, as `finish.lua` and `reject.lua` write them."""

    model_config = _STRICT
    job_id: str
    kind: str
    status: str
    cekura_status: str = Field(description="The last raw Cekura status word.")
    progress_id: str = Field(description="Cekura's progress id (empty if the start call never succeeded).")
    result: str = _json_text("JSON of the final progress payload (empty when there was none).")
    error: str = Field(description="Why it failed, timed out or was rejected (empty on success).")
    polls: str = Field(pattern=DIGITS, description="Progress calls made.")
    submitted_at: str = Field(pattern=ISO_MS, description="ISO 8601 UTC, from the Redis server's clock.")
    finished_at: str = Field(pattern=ISO_MS, description="ISO 8601 UTC, from the Redis server's clock.")
    metadata: str = _json_text("The request's metadata, as JSON.", {"type": "object"})


class JobResult(_EventTrace, _ResultFields):
    """A job's one result event (`finish.lua`)."""

    model_config = ConfigDict(extra="forbid", title="job result")
    job_id: str = Field(pattern=JOB_ID)
    kind: _KIND
    status: _JOB_STATUS


class RejectedResult(_ResultFields):
    """The answer to a request that never became a job (`reject.lua`): its `job_id` is always empty."""

    model_config = ConfigDict(extra="forbid", title="rejected request")
    job_id: Literal[""] = Field(description="Always empty: no job was made.")
    kind: str = Field(
        max_length=64, description="The kind the request named, when it could be read safely; else empty."
    )
    status: Literal["rejected"]
    request_id: str = Field(pattern=ENTRY_ID, description="The request-stream entry id.")
    requested_job_id: str = Field(
        pattern=f"^$|{JOB_ID}", description="The job id the request asked for, when it could be read safely."
    )


class _Progress(BaseModel):
    """A progress event's own fields (`ProgressEvent` adds trace context)."""

    model_config = ConfigDict(extra="forbid", title="cekura-worker progress event")
    job_id: str = Field(pattern=JOB_ID)
    kind: _KIND
    cekura_status: str = Field(description="The raw Cekura status word.")
    current_stage: str = Field(description="The stage, for kinds that report stages (agent.auto_fetch); else empty.")
    progress_id: str = Field(description="Cekura's progress id.")
    polls: str = Field(pattern=DIGITS, description="Progress calls made so far.")
    state: Literal["polling", "waiting"] = Field(
        description="`waiting`: Cekura asked a question; the job waits for an answer (request action `answer`)."
    )
    question: str | None = Field(None, description="The question Cekura asked; only with `state` `waiting`.")


class ProgressEvent(_EventTrace, _Progress):
    """Written by `advance.lua` when a job's Cekura status or stage changes (with CEKURA_PROGRESS_EVENTS on), and
    always when a job stops to wait for an answer (`state` `waiting`, with its `question`)."""


def result_schema() -> dict[str, Any]:
    """An entry of the results stream: every field a flat string."""
    adapter: TypeAdapter[JobResult | RejectedResult] = TypeAdapter(JobResult | RejectedResult)
    return {
        "$schema": DIALECT,
        "title": "cekura-worker result event",
        "description": "An entry of the results stream (CEKURA_RESULTS_STREAM, default cekura:results): one per job, "
        "or one per rejected request. Every field is a string.",
        **_exclusive(adapter.json_schema()),
    }


def progress_schema() -> dict[str, Any]:
    """An entry of the progress stream: every field a flat string."""
    schema = ProgressEvent.model_json_schema()
    return {"$schema": DIALECT, **schema, "description": f"{schema['description']} Every field is a string."}


def _exclusive(schema: dict[str, Any]) -> dict[str, Any]:
    """Pydantic's top-level `anyOf` as the `oneOf` it is: its branches can't overlap (a `kind` or `action` const, an
    empty or non-empty `job_id`), and `oneOf` tells a reader so."""
    return {("oneOf" if key == "anyOf" else key): value for key, value in schema.items()}


def build_schemas() -> dict[str, dict[str, Any]]:
    """The three schemas by name (`FILES` names their files)."""
    return {"request": request_schema(), "result": result_schema(), "progress": progress_schema()}


def render(schema: dict[str, Any]) -> str:
    """A schema as its file holds it."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the schema files (`--check`: only report the ones that differ, exiting 1 if any)."""
    parser = argparse.ArgumentParser(prog="python -m worker.schemas", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("dirs", nargs="*", type=Path, help="where to write (default: the package and ./schemas)")
    args = parser.parse_args(argv)
    in_checkout = (REPO_DIR.parent / "pyproject.toml").is_file()  # not site-packages, where `schemas` is anyone's
    dirs = args.dirs or [PACKAGE_DIR, *([REPO_DIR] if in_checkout and REPO_DIR.is_dir() else [])]
    stale = []
    for name, schema in build_schemas().items():
        text = render(schema)
        for folder in dirs:
            path = folder / FILES[name]
            if path.exists() and path.read_text() == text:
                continue
            stale.append(path)
            if not args.check:
                path.write_text(text)
    for path in stale:
        print(f"{'differs' if args.check else 'wrote'}: {path}", file=sys.stderr)
    return 1 if args.check and stale else 0
