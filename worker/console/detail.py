"""One job as the console shows it: its record, its timeline, its result event and, for an evaluator run, the
verdict of each run, and its trace id (a link, with CEKURA_TRACE_URL_TEMPLATE set).

Everything is read from Redis with reads bounded in entries and in bytes (`worker.console.reads`, each value cut
to a length): the job's record (its known fields only) and its stored secrets (`secret:<id>`, only to mask them),
the progress events of its lifetime (newest first from its end back to its submission, at most
`DEFAULT_TIMELINE_SCAN`, and `DEFAULT_PAGE_BUDGET` bytes), its result event (from the moment it finished, at most
`DEFAULT_RESULT_SCAN`), and whether `<job_id>-retry-<n>` jobs exist (`EXISTS`, n up to `DEFAULT_RETRY_LOOKUP`).
Every text is redacted (the deployment's secrets and the job's own) and then cut; the templates escape it.

The timeline is what Redis remembers: the record's times (submitted, started, last update, finished), a progress
event for each change of Cekura status or stage (written only with `CEKURA_PROGRESS_EVENTS=true`), and the latest
transient error while the job retries (the record keeps the last reason and the count, not each attempt).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from config.settings import Settings
from worker.console import reads
from worker.console.reads import CELL_BYTES, PAYLOAD_BYTES, SHORT_BYTES, TEXT_BYTES, Partial, clip, entry_ms, ms_of
from worker.redact import redact
from worker.store.jobs import iso_from_ms
from worker.tracing.context import parse_traceparent

#: Progress events read at most while building a job's timeline.
DEFAULT_TIMELINE_SCAN = 5000

#: Result events read at most, from the job's finish on, to find its event.
DEFAULT_RESULT_SCAN = 2000

#: Entries per `XRANGE`/`XREVRANGE`.
DEFAULT_BATCH = 500

#: How many `<job_id>-retry-<n>` ids a job's page looks for.
DEFAULT_RETRY_LOOKUP = 10

#: The most characters of a payload (params, metadata, result) a page shows.
DEFAULT_MAX_PAYLOAD_CHARS = 200_000

#: The most characters of a record's text field (error, question, stage...) a page or a `job` event shows.
DEFAULT_TEXT_CHARS = 10_000

#: The most characters of one value in a timeline line or a feed event.
DEFAULT_LINE_CHARS = 2_000

#: The most bytes of values one page reads from a stream (its timeline).
DEFAULT_PAGE_BUDGET = 4 * 1_048_576

#: The most runs of an evaluator run a page lists.
DEFAULT_MAX_RUNS = 500

#: The states of a job that has not finished.
ACTIVE_STATES = frozenset({"queued", "starting", "polling", "waiting"})

#: The longest job id the console looks up (valid ones are at most 128 characters).
MAX_JOB_ID_CHARS = 256

_TIMES = {
    "submitted_ms": "submitted_at",
    "started_ms": "started_at",
    "deadline_ms": "deadline_at",
    "updated_ms": "updated_at",
    "answered_ms": "answered_at",
}
_TEXTS = (
    "kind",
    "state",
    "status",
    "cekura_status",
    "current_stage",
    "polls",
    "errors",
    "error",
    "progress_id",
    "session_id",
    "question",
    "answer",
    "finished_at",
)

#: What a job's page reads of its record (field: bytes at most); `record_fields` needs all but the payloads.
RECORD_FIELDS = {
    **dict.fromkeys(_TEXTS, TEXT_BYTES),
    "submitted_at": CELL_BYTES,
    **dict.fromkeys((*_TIMES, "next_poll_ms"), SHORT_BYTES),
    "traceparent": SHORT_BYTES,
}
PAYLOAD_FIELDS = dict.fromkeys(("params", "metadata", "result"), PAYLOAD_BYTES)
_PROGRESS_FIELDS = dict.fromkeys(("cekura_status", "current_stage", "polls", "state", "question"), CELL_BYTES)
_RESULT_NAMES = ("status", "cekura_status", "error", "polls", "progress_id", "submitted_at", "finished_at")
_RESULT_FIELDS = dict.fromkeys(_RESULT_NAMES, CELL_BYTES)


@dataclass(frozen=True, slots=True)
class Moment:
    """One line of a timeline."""

    ms: int
    what: str
    detail: str = ""

    @property
    def at(self) -> str:
        return iso_from_ms(self.ms) if self.ms > 0 else ""


@dataclass(frozen=True, slots=True)
class Run:
    """One run of an evaluator run: its scenario and verdict."""

    id: str
    scenario: str
    scenario_name: str
    status: str
    verdict: str
    error_message: str


@dataclass(frozen=True, slots=True)
class ResultEvent:
    """A finished job's result: its event's fields, or (once the stream trimmed it) the same fields from the record."""

    entry_id: str
    fields: dict[str, str]
    payload: str
    runs: list[Run] | None


@dataclass
class JobDetail:
    job_id: str
    fields: dict[str, str]
    params: str
    metadata: str
    timeline: list[Moment] = field(default_factory=list)
    timeline_partial: bool = False
    result: ResultEvent | None = None
    retry_of: str = ""
    retried_as: list[str] = field(default_factory=list)
    #: The job's trace id (its span's `traceparent`), and where CEKURA_TRACE_URL_TEMPLATE says to see the trace.
    trace_id: str = ""
    trace_url: str = ""

    @property
    def state(self) -> str:
        return self.fields.get("state", "")

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def _iso(value: str | None) -> str:
    ms = ms_of(value)
    return iso_from_ms(ms) if ms else ""


def record_fields(raw: dict[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """A job hash's fields a page shows, redacted (the registered secrets and `extra`, the job's own) and then cut;
    times in ISO 8601 (the next due time only while active)."""
    out = {name: clip(raw.get(name, ""), DEFAULT_TEXT_CHARS, extra) for name in _TEXTS}
    for source, name in _TIMES.items():
        out[name] = _iso(raw.get(source))
    out["next_due_at"] = _iso(raw.get("next_poll_ms")) if raw.get("state") in ACTIVE_STATES else ""
    return out


def pretty(text: str, extra: Iterable[str] = ()) -> str:
    """JSON text indented for reading (text that isn't JSON as it is), redacted and then cut at the display limit;
    a `Partial` (a payload too large to read whole) is shown as it is, cut."""
    shown = text
    if not isinstance(text, Partial):
        with contextlib.suppress(ValueError, RecursionError):
            shown = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    shown = redact(shown, tuple(extra))
    if isinstance(text, Partial):  # the end may hold part of a secret the cut in Redis made unrecognisable
        keep = min(DEFAULT_MAX_PAYLOAD_CHARS, max(0, len(shown) - reads.DEFAULT_MARGIN_CHARS))
        return shown[:keep] + f"\n... (cut: {text.size:,} bytes in all)"
    if len(shown) > DEFAULT_MAX_PAYLOAD_CHARS:
        shown = shown[:DEFAULT_MAX_PAYLOAD_CHARS] + f"\n... ({len(shown) - DEFAULT_MAX_PAYLOAD_CHARS} more characters)"
    return shown


def _text(value: Any, extra: Iterable[str]) -> str:
    if value is None:
        return ""
    return clip(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False), DEFAULT_LINE_CHARS, extra)


def runs_of(payload: Any, extra: Iterable[str] = ()) -> list[Run] | None:
    """The runs of an evaluator run's result (Cekura's ResultDetailV2: `runs` keyed by run id, or a list), or None
    when the payload has none."""
    if not isinstance(payload, dict):
        return None
    runs = payload.get("runs")
    if runs is None and isinstance(payload.get("result"), dict):
        runs = payload["result"].get("runs")
    if isinstance(runs, dict):
        items = [{"id": key, **value} if isinstance(value, dict) else {"id": key} for key, value in runs.items()]
    elif isinstance(runs, list):
        items = [value for value in runs if isinstance(value, dict)]
    else:
        return None
    out = []
    for run in items[:DEFAULT_MAX_RUNS]:
        success = run.get("success")
        verdict = "passed" if success is True else "failed" if success is False else ""
        out.append(
            Run(
                id=_text(run.get("id"), extra),
                scenario=_text(run.get("scenario"), extra),
                scenario_name=_text(run.get("scenario_name"), extra),
                status=_text(run.get("status"), extra),
                verdict=verdict,
                error_message=_text(run.get("error_message"), extra),
            )
        )
    return out


def _moment(entry_id: str, f: dict[str, str], extra: tuple[str, ...]) -> Moment:
    def line(name: str, default: str = "") -> str:
        return clip(f.get(name, default), DEFAULT_LINE_CHARS, extra)

    stage = line("current_stage")
    detail = f"Cekura status {line('cekura_status')}" + (f", stage {stage}" if stage else "")
    detail += f" (poll {line('polls', '0')})"
    what = "progress"
    if f.get("state") == "waiting":  # the job asked a question (progress events name the state)
        what, detail = "waiting", f"{detail}; asks: {line('question')}"
    return Moment(entry_ms(entry_id), what, redact(detail, extra))


def _progress_moments(
    client: redis.Redis, settings: Settings, job_id: str, since_ms: int, until: str, extra: tuple[str, ...]
) -> tuple[list[Moment], bool]:
    """The progress events of `job_id` between `since_ms` and `until`, oldest first; and whether the scan stopped
    at its limit (in events or in bytes) before reaching `since_ms`."""
    moments: list[Moment] = []
    upper, scanned, used = until, 0, 0
    while scanned < DEFAULT_TIMELINE_SCAN and used < DEFAULT_PAGE_BUDGET:
        got = reads.entries(
            client,
            settings.cekura_progress_stream,
            _PROGRESS_FIELDS,
            start=upper,
            end=f"{since_ms}-0",
            count=min(DEFAULT_BATCH, DEFAULT_TIMELINE_SCAN - scanned),
            reverse=True,
            match=("job_id", job_id),
            budget=DEFAULT_PAGE_BUDGET - used,
        )
        moments.extend(_moment(entry_id, f, extra) for entry_id, f in got.rows)
        scanned, used = scanned + got.scanned, used + got.used
        if got.ended:
            return list(reversed(moments)), False
        upper = f"({got.last}"
    return list(reversed(moments)), True


def _result_event(client: redis.Redis, settings: Settings, job_id: str, finished_ms: int) -> tuple[str, dict[str, str]]:
    """The entry id and fields of the job's result event (its payload aside: the record has it), or ("", {}) if
    the stream no longer has it."""
    got = reads.entries(
        client,
        settings.cekura_results_stream,
        _RESULT_FIELDS,
        start=f"{finished_ms}-0",
        end="+",
        count=DEFAULT_RESULT_SCAN,
        match=("job_id", job_id),
        rows=1,
    )
    return got.rows[0] if got.rows else ("", {})


def _result(raw: dict[str, str], entry_id: str, event: dict[str, str], extra: tuple[str, ...]) -> ResultEvent:
    source = event or raw
    fields = {name: clip(source.get(name, ""), DEFAULT_TEXT_CHARS, extra) for name in _RESULT_NAMES}
    text = raw.get("result", "")
    try:
        payload = json.loads(text) if text and not isinstance(text, Partial) else None
    except (ValueError, RecursionError):
        payload = None
    return ResultEvent(redact(entry_id, extra), fields, pretty(text, extra) if text else "", runs_of(payload, extra))


def _timeline(raw: dict[str, str], fields: dict[str, str], retry_of: str) -> list[Moment]:
    moments = []
    submitted = ms_of(raw.get("submitted_ms"))
    deadline_s = (ms_of(raw.get("deadline_ms")) - submitted) / 1000 if submitted else 0
    detail = f"kind {fields['kind']}, deadline {deadline_s:g} s" + (f"; a retry of job {retry_of}" if retry_of else "")
    moments.append(Moment(submitted, "submitted", redact(detail)))
    if ms_of(raw.get("started_ms")):
        moments.append(Moment(ms_of(raw.get("started_ms")), "started", f"progress id {fields['progress_id']}"))
    updated = ms_of(raw.get("updated_ms"))
    if raw.get("state") in ACTIVE_STATES and ms_of(raw.get("errors")) > 0:
        moments.append(
            Moment(updated, "retrying", f"after transient error {fields['errors']} in a row: {fields['error']}")
        )
    if raw.get("state") == "waiting":
        moments.append(Moment(updated, "waiting", f"for an answer: {fields['question']}"))
    if answered := ms_of(raw.get("answered_ms")):
        moments.append(Moment(answered, "answered", "the answer goes to Cekura with the next poll"))
    if raw.get("state") == "finished":
        error = f": {fields['error']}" if fields["error"] else ""
        moments.append(Moment(updated, "finished", f"{fields['status']}{error}"))
    return moments


def load(client: redis.Redis, settings: Settings, job_id: str) -> JobDetail | None:
    """The job's page, or None when Redis has no record of it (never submitted, expired, or its key holds
    something other than a job)."""
    if not 0 < len(job_id) <= MAX_JOB_ID_CHARS:
        return None
    job = reads.jobs(client, settings, [job_id], {**RECORD_FIELDS, **PAYLOAD_FIELDS})[0]
    if not job.found:
        return None
    raw, extra = job.fields, job.secrets
    fields = record_fields(raw, extra)
    metadata_text = raw.get("metadata") or "{}"
    try:
        metadata = json.loads(metadata_text) if not isinstance(metadata_text, Partial) else {}
    except (ValueError, RecursionError):
        metadata = {}
    retry_of = metadata.get("retry_of") if isinstance(metadata, dict) else None
    detail = JobDetail(
        job_id=redact(job_id, extra),
        fields=fields,
        params=pretty(raw.get("params") or "{}", extra),
        metadata=pretty(metadata_text, extra),
        retry_of=clip(retry_of, MAX_JOB_ID_CHARS, extra) if isinstance(retry_of, str) else "",
    )
    if (context := parse_traceparent(raw.get("traceparent") or "")) is not None:
        detail.trace_id = context.trace_id  # hex only, whatever the record held: parsed, not copied
        template = settings.cekura_trace_url_template
        detail.trace_url = template.replace("{trace_id}", context.trace_id) if template else ""
    timeline = _timeline(raw, fields, detail.retry_of)
    finished_ms = ms_of(raw.get("updated_ms")) if raw.get("state") == "finished" else 0
    until = str(finished_ms + 1000) if finished_ms else "+"  # a second's margin: the event's id is its server ms
    since = ms_of(raw.get("submitted_ms"))
    progress, detail.timeline_partial = _progress_moments(client, settings, job_id, since, until, extra)
    if any(m.what == "waiting" for m in progress):  # the event says it already, with its time
        timeline = [m for m in timeline if m.what != "waiting"]
    detail.timeline = sorted([*timeline, *progress], key=lambda m: (m.ms, m.what != "submitted"))
    if finished_ms:
        entry_id, event = _result_event(client, settings, job_id, finished_ms)
        detail.result = _result(raw, entry_id, event, extra)
    candidates = [f"{job_id}-retry-{n}" for n in range(1, DEFAULT_RETRY_LOOKUP + 1)]
    pipe = client.pipeline(transaction=False)
    for candidate in candidates:
        pipe.exists(settings.key("job", candidate))
    detail.retried_as = [c for c, found in zip(candidates, pipe.execute(), strict=True) if found]
    return detail
