"""A start whose answer was lost, looked for by its tag rather than failed at once (`worker.cekura.lookup`).

For a kind with a `lookup_path` (evaluator runs), a start whose outcome is unknown moves the job to `polling` with
no progress id: its polls then look for the tag in Cekura's results list, first after `DEFAULT_FIRST_LOOK_S`, then
at doubling gaps, for CEKURA_LOOKUP_SETTLE_S. Exactly one result carrying the tag, created after the job was
submitted, is adopted: the job polls it as if the start had answered. Two results carrying it fail the job at once;
nothing found within the window fails it "outcome unknown", as the kinds without a lookup fail at once. Each look is
an ordinary claimed poll step, so it keeps every guarantee a poll has (one at a time, never past the deadline).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
import structlog

from actors.kinds import JobKind
from actors.step import Step, fail, unknown_start
from worker.cekura import lookup
from worker.errors import CekuraError, PermanentError
from worker.ops import metrics
from worker.redact import redact
from worker.runtime.app import Runtime
from worker.store.records import Advanced, AdvanceVerdict, JobRecord
from worker.store.results import ResultIndex

log = structlog.get_logger(__name__)

#: Seconds before the first look: Cekura lists a new result at once, but a proxy's 5xx may come before it exists.
DEFAULT_FIRST_LOOK_S = 2.0

#: Records this step and schedules the job's next poll: `actors.jobs._next_poll`.
Schedule = Callable[[Step, str, int, dict[str, Any]], Advanced]


def start_tag(step: Step) -> str:
    """The tag this job's start carries (`worker.cekura.lookup.tag`); "" for a kind without one."""
    if step.kind.tag_field is None:
        return ""
    return _tag(step.rt, step.job_id, step.job.submitted_ms)


def _tag(rt: Runtime, job_id: str, submitted_ms: int) -> str:
    key = rt.settings.cekura_api_key
    return lookup.tag(job_id, submitted_ms, key.get_secret_value() if key else "")


def lost_start(step: Step, reason: str, schedule: Schedule) -> None:
    """A start that must not repeat may have reached Cekura: look for it where the kind can, else fail safe."""
    if step.kind.lookup_path is None:
        fail(step, unknown_start(reason))
        return
    settle_s = step.rt.settings.cekura_lookup_settle_s
    fields: dict[str, Any] = {"progress_id": "", "error": unknown_start(reason), "started_ms": step.claim.now_ms}
    done = schedule(step, "polling", step.delay_ms(min(DEFAULT_FIRST_LOOK_S, settle_s)), fields)
    if done.verdict is AdvanceVerdict.OK:
        log.warning("start_outcome_unknown_looking", reason=reason, tag=start_tag(step), settle_s=settle_s)


def look(step: Step, schedule: Schedule) -> None:
    """One look for the job's tag: adopt the one result, look again later, or fail once the window closed."""
    rt, job, kind = step.rt, step.job, step.kind
    window_end_ms = job.started_ms + int(rt.settings.cekura_lookup_settle_s * 1000)
    try:
        answer = rt.cekura.find(kind, start_tag(step), time_left_s=step.time_left_s())
    except CekuraError as exc:
        metrics.CEKURA_CALLS.labels("lookup", str(exc.status_code or "error")).inc()
        # Never final: one unreadable answer (a proxy's page, a 5xx) must not end the window early.
        found = lookup.Found(reason=f"the results list could not be read: {redact(str(exc), step.secrets)}")
    else:
        metrics.CEKURA_CALLS.labels("lookup", "ok").inc()
        found = lookup.choose(answer, start_tag(step), job.submitted_ms)
    if found.result_id:
        _adopt(step, found.result_id, schedule)
        return
    looked_s = max(0.0, (step.claim.now_ms - job.started_ms) / 1000)
    if found.final or step.claim.now_ms >= window_end_ms:
        fail(step, unknown_start(f"its answer was lost, and a search by its tag for {looked_s:.0f} s: {found.reason}"))
        return
    gap_s = max(DEFAULT_FIRST_LOOK_S, looked_s)  # doubling gaps, the last one ending with the window
    delay_ms = step.delay_ms(min(gap_s, (window_end_ms - step.claim.now_ms) / 1000))
    schedule(step, "polling", max(1, delay_ms), {"errors": 0})
    log.info("lost_start_not_found_yet", reason=found.reason, next_look_s=delay_ms / 1000)


def _adopt(step: Step, result_id: str, schedule: Schedule) -> None:
    kind = step.kind
    delay_ms = step.delay_ms(step.next_poll_s(1, step.elapsed_s()))
    done = schedule(step, "polling", delay_ms, {"progress_id": result_id, "error": "", "errors": 0})
    if done.verdict is not AdvanceVerdict.OK:
        return
    structlog.contextvars.bind_contextvars(progress_id=result_id)
    log.warning("lost_start_found", progress_id=result_id, tag=start_tag(step), next_poll_s=delay_ms / 1000)
    if kind.webhooks:
        index_result(step, result_id)


def index_result(step: Step, result_id: str) -> None:
    """Let a result webhook find this job (kept until the job's deadline plus its record's TTL)."""
    rt = step.rt
    ttl_ms = step.job.deadline_ms - step.claim.now_ms + rt.settings.cekura_job_ttl_s * 1000
    ResultIndex(rt.store).add(result_id, step.job_id, ttl_ms)


def orphaned(
    step: Step, session_id: int | None, progress_id: str, verdict: AdvanceVerdict, cancel: Callable[..., Any]
) -> None:
    """A start call succeeded, but its step could not be recorded: the job was cancelled while the call was in flight
    (FINISHED), or this attempt was paused past its lease and another took the step over (STALE). Stop the operation
    it began at Cekura, unless the job itself has adopted that very operation (a lookup found it by its tag)."""
    record = step.rt.store.get(step.job_id) or {}
    if progress_id and record.get("progress_id") == progress_id:
        log.info("late_start_answer_ignored", progress_id=progress_id, hint="the job found this operation already")
        return
    if step.kind.lookup_path and record.get("state") == "polling" and not record.get("progress_id"):
        # The job is looking for its lost start by its tag: this operation is the one it will find, not an orphan.
        log.info("late_start_answer_ignored", progress_id=progress_id, hint="the job is looking for this operation")
        return
    event = "job_cancelled_during_start" if verdict is AdvanceVerdict.FINISHED else "duplicate_start_cancelled"
    log.warning(event, session_id=session_id)
    cancel(step.job_id, step.kind.name, session_id, progress_id)


def find_to_cancel(rt: Runtime, job_id: str, kind: JobKind) -> str:
    """The result id of a job that ended (cancelled, timed out) while it looked for its lost start, found by its tag
    as the job would have: "" when none is (then nothing runs at Cekura that the job could know of)."""
    try:
        record = JobRecord.from_fields(rt.store.get(job_id) or {})
    except redis.ResponseError:
        return ""
    mark = _tag(rt, job_id, record.submitted_ms)
    try:
        found = lookup.choose(rt.cekura.find(kind, mark), mark, record.submitted_ms)
    except CekuraError as exc:
        if isinstance(exc, PermanentError):
            log.warning("cekura_cancel_lookup_failed", error=redact(str(exc)))
            return ""
        raise  # transient: Dramatiq retries the cancel
    if not found.result_id:
        log.info("cekura_cancel_nothing_found", reason=found.reason)
    return found.result_id
