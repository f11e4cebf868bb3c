"""One job as the console shows it: its record, its timeline, its result event and, for an evaluator run, the
verdict of each run.

Everything is read from Redis with bounded reads: the job's hash (`HGETALL`; never its `secret:` key), the progress
events of its lifetime (`XREVRANGE` from its end back to its submission, at most `DEFAULT_TIMELINE_SCAN`), its result
event (`XRANGE` from the moment it finished, at most `DEFAULT_RESULT_SCAN`), and whether `<job_id>-retry-<n>` jobs
exist (`EXISTS`, n up to `DEFAULT_RETRY_LOOKUP`). Every text passes through `worker.redact.redact`; the templates
escape it.

The timeline is what Redis remembers: the record's times (submitted, started, last update, finished), a progress
event for each change of Cekura status or stage (written only with `CEKURA_PROGRESS_EVENTS=true`), and the latest
transient error while the job retries (the record keeps the last reason and the count, not each attempt).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from config.settings import Settings
from worker.redact import redact
from worker.store.jobs import as_text, iso_from_ms

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

    @property
    def state(self) -> str:
        return self.fields.get("state", "")

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def _ms(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


def record_fields(raw: dict[str, str]) -> dict[str, str]:
    """A job hash's fields a page shows, as redacted text; times in ISO 8601 (the next due time only while active)."""
    out = {name: redact(raw.get(name, "")) for name in _TEXTS}
    for source, name in _TIMES.items():
        out[name] = iso_from_ms(_ms(raw.get(source))) if _ms(raw.get(source)) else ""
    active = raw.get("state") in ACTIVE_STATES
    out["next_due_at"] = iso_from_ms(_ms(raw.get("next_poll_ms"))) if active and _ms(raw.get("next_poll_ms")) else ""
    return out


def pretty(text: str) -> str:
    """JSON text indented for reading (text that isn't JSON as it is), redacted and cut at the display limit."""
    try:
        shown = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        shown = text
    if len(shown) > DEFAULT_MAX_PAYLOAD_CHARS:
        shown = shown[:DEFAULT_MAX_PAYLOAD_CHARS] + f"\n... ({len(shown) - DEFAULT_MAX_PAYLOAD_CHARS} more characters)"
    return redact(shown)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return redact(value)
    return redact(json.dumps(value, ensure_ascii=False))


def runs_of(payload: Any) -> list[Run] | None:
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
                id=_text(run.get("id")),
                scenario=_text(run.get("scenario")),
                scenario_name=_text(run.get("scenario_name")),
                status=_text(run.get("status")),
                verdict=verdict,
                error_message=_text(run.get("error_message")),
            )
        )
    return out


def _progress_moments(
    client: redis.Redis, settings: Settings, job_id: str, since_ms: int, until: str
) -> tuple[list[Moment], bool]:
    """The progress events of `job_id` between `since_ms` and `until`, oldest first; and whether the scan stopped
    at its limit before reaching `since_ms`."""
    stream = settings.cekura_progress_stream
    moments: list[Moment] = []
    upper, scanned = until, 0
    while scanned < DEFAULT_TIMELINE_SCAN:
        batch = client.xrevrange(stream, max=upper, min=f"{since_ms}-0", count=DEFAULT_BATCH)
        for entry_id, raw in batch:
            fields = {as_text(k): as_text(v) for k, v in raw.items()}
            if fields.get("job_id") != job_id:
                continue
            stage = fields.get("current_stage", "")
            detail = f"Cekura status {fields.get('cekura_status', '')}" + (f", stage {stage}" if stage else "")
            detail += f" (poll {fields.get('polls', '0')})"
            what = "progress"
            if fields.get("state") == "waiting":  # the job asked a question (progress events name the state)
                what, detail = "waiting", f"{detail}; asks: {fields.get('question', '')}"
            moments.append(Moment(int(as_text(entry_id).split("-")[0]), what, redact(detail)))
        scanned += len(batch)
        if len(batch) < DEFAULT_BATCH:
            return list(reversed(moments)), False
        upper = f"({as_text(batch[-1][0])}"
    return list(reversed(moments)), True


def _result_event(client: redis.Redis, settings: Settings, job_id: str, finished_ms: int) -> tuple[str, dict[str, str]]:
    """The entry id and fields of the job's result event, or ("", {}) if the stream no longer has it."""
    lower, scanned = f"{finished_ms}-0", 0
    while scanned < DEFAULT_RESULT_SCAN:
        batch = client.xrange(settings.cekura_results_stream, min=lower, max="+", count=DEFAULT_BATCH)
        for entry_id, raw in batch:
            fields = {as_text(k): as_text(v) for k, v in raw.items()}
            if fields.get("job_id") == job_id:
                return as_text(entry_id), fields
        scanned += len(batch)
        if len(batch) < DEFAULT_BATCH:
            break
        lower = f"({as_text(batch[-1][0])}"
    return "", {}


def _result(raw: dict[str, str], entry_id: str, event: dict[str, str]) -> ResultEvent:
    source = event or raw
    names = ("status", "cekura_status", "error", "polls", "progress_id", "submitted_at", "finished_at")
    fields = {name: redact(source.get(name, "")) for name in names}
    text = source.get("result", "")
    try:
        payload = json.loads(text) if text else None
    except (ValueError, RecursionError):
        payload = None
    return ResultEvent(redact(entry_id), fields, pretty(text) if text else "", runs_of(payload))


def _timeline(raw: dict[str, str], fields: dict[str, str], retry_of: str) -> list[Moment]:
    moments = []
    submitted = _ms(raw.get("submitted_ms"))
    deadline_s = (_ms(raw.get("deadline_ms")) - submitted) / 1000 if submitted else 0
    detail = f"kind {fields['kind']}, deadline {deadline_s:g} s" + (f"; a retry of job {retry_of}" if retry_of else "")
    moments.append(Moment(submitted, "submitted", redact(detail)))
    if _ms(raw.get("started_ms")):
        moments.append(Moment(_ms(raw.get("started_ms")), "started", f"progress id {fields['progress_id']}"))
    updated = _ms(raw.get("updated_ms"))
    if raw.get("state") in ACTIVE_STATES and _ms(raw.get("errors")) > 0:
        moments.append(
            Moment(updated, "retrying", f"after transient error {fields['errors']} in a row: {fields['error']}")
        )
    if raw.get("state") == "waiting":
        moments.append(Moment(updated, "waiting", f"for an answer: {fields['question']}"))
    if _ms(raw.get("answered_ms")):
        moments.append(Moment(_ms(raw.get("answered_ms")), "answered", "the answer goes to Cekura with the next poll"))
    if raw.get("state") == "finished":
        error = f": {fields['error']}" if fields["error"] else ""
        moments.append(Moment(updated, "finished", f"{fields['status']}{error}"))
    return moments


def load(client: redis.Redis, settings: Settings, job_id: str) -> JobDetail | None:
    """The job's page, or None when Redis has no record of it (never submitted, or expired)."""
    if not 0 < len(job_id) <= MAX_JOB_ID_CHARS:
        return None
    try:
        stored = client.hgetall(settings.key("job", job_id))
    except redis.ResponseError:  # WRONGTYPE: the key holds something other than a job
        return None
    if not stored:
        return None
    raw = {as_text(k): as_text(v) for k, v in stored.items()}
    fields = record_fields(raw)
    try:
        metadata = json.loads(raw.get("metadata") or "{}")
    except (ValueError, RecursionError):
        metadata = {}
    retry_of = metadata.get("retry_of") if isinstance(metadata, dict) else None
    detail = JobDetail(
        job_id=job_id,
        fields=fields,
        params=pretty(raw.get("params") or "{}"),
        metadata=pretty(raw.get("metadata") or "{}"),
        retry_of=redact(retry_of) if isinstance(retry_of, str) else "",
    )
    timeline = _timeline(raw, fields, detail.retry_of)
    finished_ms = _ms(raw.get("updated_ms")) if raw.get("state") == "finished" else 0
    until = str(finished_ms + 1000) if finished_ms else "+"  # a second's margin: the event's id is its server ms
    progress, detail.timeline_partial = _progress_moments(client, settings, job_id, _ms(raw.get("submitted_ms")), until)
    if any(m.what == "waiting" for m in progress):  # the event says it already, with its time
        timeline = [m for m in timeline if m.what != "waiting"]
    detail.timeline = sorted([*timeline, *progress], key=lambda m: (m.ms, m.what != "submitted"))
    if finished_ms:
        entry_id, event = _result_event(client, settings, job_id, finished_ms)
        detail.result = _result(raw, entry_id, event)
    candidates = [f"{job_id}-retry-{n}" for n in range(1, DEFAULT_RETRY_LOOKUP + 1)]
    pipe = client.pipeline(transaction=False)
    for candidate in candidates:
        pipe.exists(settings.key("job", candidate))
    detail.retried_as = [c for c, found in zip(candidates, pipe.execute(), strict=True) if found]
    return detail
