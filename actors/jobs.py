"""The actors: start a Cekura operation, poll its progress by re-sending themselves with a delay, cancel it.

Every actor is safe to run twice. Each step first *claims* the job in Redis: a duplicate or out-of-date
message finds the claim taken or its `seq` superseded and does nothing. A poll message normally arrives
claimed already (the broker's fetch made the claim as it popped the message, saving a round trip); otherwise,
and for start messages, the actor claims with `JobStore.claim`. A step that doesn't end the job sends its next
message with `send_with_options(delay=...)` inside `broker.outbox()`, and `advance` writes that message together
with the step's state in one atomic script; a step that ends the job writes the outcome and the result event in
one atomic `finish`. If a worker dies mid-step (or holding a message), the reconciler re-sends the job's message
once it is overdue.

Importing this module binds the actors to the broker `setup()` made: only entry points import it, after setup
(`worker.runtime.app.bind_actors`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import dramatiq
import redis
import structlog

from actors import names
from actors.kinds import KINDS, JobKind, Outcome, Params
from worker.cekura.backoff import poll_delay, retry_delay
from worker.errors import CekuraError, PermanentError, RateLimited
from worker.ops import metrics
from worker.redact import redact
from worker.runtime.app import Runtime, runtime
from worker.store.records import AdvanceVerdict, Claim, ClaimVerdict, FinishVerdict, JobRecord, Phase

log = structlog.get_logger(__name__)

#: Hard limit on one message's run time; HTTP timeouts end every call well before it.
DEFAULT_TIME_LIMIT_MS = 120_000

#: Extra random delay spread over messages released together after a rate-limit cooldown.
DEFAULT_COOLDOWN_SPREAD_MS = 1000

#: A claim the fetch made is taken afresh when its message waited this share of the lease before running, so a
#: call (bounded by half the lease) always ends before its lease does.
DEFAULT_FETCHED_CLAIM_MAX_AGE = 0.25

_QUEUE = runtime().settings.cekura_queue

#: The per-poll counter's child, looked up once (`labels()` on every poll showed in profiles).
_PROGRESS_OK = metrics.CEKURA_CALLS.labels("progress", "ok")


@dataclass(frozen=True, slots=True)
class Step:
    """One claimed step of one job: what every helper below needs, passed as one value."""

    rt: Runtime
    job_id: str
    phase: Phase
    claim: Claim
    job: JobRecord
    kind: JobKind
    #: How long ago (s) the claim was made: a poll's claim may have been made by the fetch a moment before.
    age_s: float = 0.0
    #: The job's own secrets (a provider key), masked in whatever this step writes.
    secrets: tuple[str, ...] = ()

    @property
    def seq(self) -> int:
        return self.job.seq

    def time_left_s(self) -> float:
        """Seconds before the job's deadline (the bound on this step's Cekura call)."""
        return self.claim.time_left_s(self.age_s)

    def delay_ms(self, delay_s: float) -> int:
        """A delay in ms, never past the job's deadline (so it times out on time)."""
        return max(1, min(int(delay_s * 1000), self.job.deadline_ms - self.claim.now_ms))


def _run(body: Callable[[Step], None], step: Step) -> None:
    """Run a claimed step; anything unexpected ends the job `failed` once (see `_internal_error`)."""
    try:
        body(step)
    except redis.RedisError:
        raise  # Dramatiq retries; should the lease be lost with it, the reconciler re-sends the job's step
    except Exception as exc:
        _internal_error(step, exc)


def _step(rt: Runtime, job_id: str, phase: Phase, claim: Claim, age_s: float = 0.0) -> Step:
    assert claim.job is not None
    return Step(rt, job_id, phase, claim, claim.job, KINDS[claim.job.kind], age_s)


@dramatiq.actor(actor_name=names.START, queue_name=_QUEUE, max_retries=3, time_limit=DEFAULT_TIME_LIMIT_MS)
def start(job_id: str, reserved: bool = False) -> None:
    """Call the kind's start endpoint once, record the progress id and schedule the first poll."""
    rt = runtime()
    claim = rt.store.claim(job_id, Phase.START, 0, reserved=reserved)
    if not _proceed(claim, job_id, Phase.START, 0):
        return
    _run(_start, _step(rt, job_id, Phase.START, claim))


def _start(step: Step) -> None:
    rt, job_id, kind = step.rt, step.job_id, step.kind
    structlog.contextvars.bind_contextvars(kind=kind.name)
    raw = json.loads(step.job.params)
    if kind.secret_fields:
        stored = rt.store.secrets(job_id)
        raw.update(stored)
        step = replace(step, secrets=tuple(stored.values()))
    params = kind.validate(raw)
    try:
        started = rt.cekura.start(kind, params, time_left_s=step.time_left_s())
    except CekuraError as exc:
        metrics.CEKURA_CALLS.labels("start", str(exc.status_code or "error")).inc()
        _failed_call(step, exc)
        return
    metrics.CEKURA_CALLS.labels("start", "ok").inc()
    metrics.JOBS_STARTED.labels(kind.name).inc()
    delay_ms = step.delay_ms(poll_delay(1, rt.settings))
    fields: dict[str, Any] = {
        "progress_id": started.progress_id,
        "errors": 0,
        "error": "",
        "started_ms": step.claim.now_ms,
    }
    if started.session_id is not None:
        fields["session_id"] = started.session_id
    with rt.broker.outbox() as first_poll:
        poll.send_with_options(args=(job_id, step.seq + 1), delay=delay_ms)
        done = rt.store.advance(
            job_id, Phase.START, step.seq, next_state="polling", delay_ms=delay_ms, fields=fields, scheduled=first_poll
        )
    structlog.contextvars.bind_contextvars(progress_id=started.progress_id)
    if done.verdict is AdvanceVerdict.OK:
        log.info(
            "job_started", progress_id=started.progress_id, session_id=started.session_id, next_poll_s=delay_ms / 1000
        )
    elif kind.cancel_path and started.session_id is not None and done.verdict is AdvanceVerdict.FINISHED:
        # Cancelled while the start call was in flight: stop the operation Cekura just began.
        log.info("job_cancelled_during_start", session_id=started.session_id)
        cancel_remote.send(job_id, kind.name, started.session_id)
    elif kind.cancel_path and started.session_id is not None and done.verdict is AdvanceVerdict.STALE:
        # Another attempt started the job while this one was stalled past its lease (a paused process): this
        # operation is an orphan at Cekura; stop it where Cekura can.
        log.warning("duplicate_start_cancelled", session_id=started.session_id)
        cancel_remote.send(job_id, kind.name, started.session_id)


@dramatiq.actor(actor_name=names.POLL, queue_name=_QUEUE, max_retries=3, time_limit=DEFAULT_TIME_LIMIT_MS)
def poll(job_id: str, seq: int, reserved: bool = False) -> None:
    """Poll progress once; finish the job on a terminal status, else re-send this actor with the next delay."""
    rt = runtime()
    fetched, age_s, owner = rt.broker.take_fetched_claim()
    claim = rt.store.parse_claim(fetched) if fetched is not None else None
    if claim is not None and (
        age_s > rt.settings.cekura_lease_s * DEFAULT_FETCHED_CLAIM_MAX_AGE
        or (claim.job is not None and claim.time_left_s(age_s) <= 0)
    ):
        claim = None  # it waited too long in this process, or past the deadline: ask again (the same owner may)
    if claim is None:
        claim = rt.store.claim(job_id, Phase.POLL, seq, reserved=reserved, owner=owner if fetched else "")
        age_s = 0.0
    if not _proceed(claim, job_id, Phase.POLL, seq):
        return
    _run(_poll, _step(rt, job_id, Phase.POLL, claim, age_s))


def _poll(step: Step) -> None:
    rt, job_id, kind, job = step.rt, step.job_id, step.kind, step.job
    polls = job.polls + 1
    structlog.contextvars.bind_contextvars(kind=kind.name, progress_id=job.progress_id, poll=polls)
    params = kind.validate(json.loads(job.params))
    if kind.secret_fields:
        # A kind's own secrets (a provider key) stay in their key until the job ends, to mask Cekura echoing them.
        step = replace(step, secrets=tuple(rt.store.secrets(job_id).values()))
    try:
        data = rt.cekura.progress(kind, params, job.progress_id, time_left_s=step.time_left_s())
    except CekuraError as exc:
        metrics.CEKURA_CALLS.labels("progress", str(exc.status_code or "error")).inc()
        _failed_call(step, exc, polls=polls)
        return
    _PROGRESS_OK.inc()
    raw_status = data["status"]
    status = redact(raw_status, step.secrets)  # Cekura's words are stored and logged: never a secret in them
    stage = data.get(kind.stage_field) if kind.stage_field else None
    stage = redact(stage, step.secrets) if isinstance(stage, str) else None
    outcome = kind.outcome(raw_status)
    if outcome is not None:
        error = ""
        if outcome in (Outcome.FAILED, Outcome.CANCELLED):
            error = str(data.get("error") or f"Cekura reported status {status!r}")
        _finish(step, outcome, cekura_status=status, result=data, error=error, polls=polls)
        return
    delay_ms = step.delay_ms(poll_delay(polls + 1, rt.settings))
    fields: dict[str, Any] = {"polls": polls, "cekura_status": status, "errors": 0}
    if stage is not None:
        fields["current_stage"] = stage
    with rt.broker.outbox() as next_poll:
        poll.send_with_options(args=(job_id, step.seq + 1), delay=delay_ms)
        done = rt.store.advance(
            job_id, Phase.POLL, step.seq, next_state="polling", delay_ms=delay_ms, fields=fields, scheduled=next_poll
        )
    if done.verdict is not AdvanceVerdict.OK:
        log.debug("poll_superseded", verdict=done.verdict.value)
        return
    if done.changed:
        if raw_status not in kind.running:
            log.warning("unexpected_cekura_status", cekura_status=status, hint="treated as still running")
        log.info("job_progress", cekura_status=status, current_stage=stage, next_poll_s=delay_ms / 1000)
    else:
        log.debug("job_polled", cekura_status=status, next_poll_s=delay_ms / 1000)


@dramatiq.actor(actor_name=names.CANCEL_REMOTE, queue_name=_QUEUE, max_retries=5, time_limit=DEFAULT_TIME_LIMIT_MS)
def cancel_remote(job_id: str, kind_name: str, session_id: int) -> None:
    """Ask Cekura to stop a cancelled job's operation (scenario agent: `cancel-agent` with the session id)."""
    rt = runtime()
    kind = KINDS[kind_name]
    structlog.contextvars.bind_contextvars(kind=kind_name)
    try:
        answer = rt.cekura.cancel(kind, session_id)
    except PermanentError as exc:
        metrics.CEKURA_CALLS.labels("cancel", str(exc.status_code or "error")).inc()
        log.warning("cekura_cancel_refused", session_id=session_id, error=redact(str(exc)))
        return
    except CekuraError as exc:  # transient: Dramatiq's Retries middleware tries again with backoff
        metrics.CEKURA_CALLS.labels("cancel", str(exc.status_code or "error")).inc()
        log.warning("cekura_cancel_retrying", session_id=session_id, error=redact(str(exc)))
        raise
    metrics.CEKURA_CALLS.labels("cancel", "ok").inc()
    log.info("cekura_cancelled", session_id=session_id, success=answer.get("success"))


def _proceed(claim: Claim, job_id: str, phase: Phase, seq: int) -> bool:
    """Act on a claim that is not `ok`; True when the caller should go on with the Cekura call."""
    if claim.verdict is ClaimVerdict.OK:
        return True
    if claim.verdict is ClaimVerdict.WAIT:
        metrics.RATE_LIMIT_WAITS.labels(claim.wait_reason).inc()
        delay = claim.wait_ms
        if claim.wait_reason == "cooldown":
            delay += random.randint(0, DEFAULT_COOLDOWN_SPREAD_MS)
        delay = max(1, min(delay, claim.remaining_ms))  # the script capped the wait at the deadline; so is the spread
        if phase is Phase.START:
            start.send_with_options(args=(job_id, claim.reserved), delay=delay)
        else:
            poll.send_with_options(args=(job_id, seq, claim.reserved), delay=delay)
        log.debug("cekura_call_deferred", reason=claim.wait_reason, delay_ms=delay)
    elif claim.verdict is ClaimVerdict.EXPIRED:
        _time_out(runtime(), job_id, phase, seq)
    elif claim.verdict is ClaimVerdict.CORRUPT:
        log.error("job_record_unreadable", job_id=job_id, reason="its key holds something other than a job record")
    else:
        log.debug("message_ignored", verdict=claim.verdict.value, phase=phase.value, seq=seq)
    return False


def _time_out(rt: Runtime, job_id: str, phase: Phase, seq: int) -> None:
    """End a job whose deadline passed `timed_out` (the claim that found it so holds no lease)."""
    fields = rt.store.get(job_id) or {}
    job = JobRecord.from_fields(fields)
    structlog.contextvars.bind_contextvars(kind=job.kind or None, progress_id=job.progress_id or None)
    outcome = Outcome.TIMED_OUT
    error = f"deadline of {job.deadline_s:g}s passed before Cekura reported a terminal status"
    # A start message may time out a job in any state; a poll message only the poll it was sent for.
    expect = Phase.POLL.value if phase is Phase.POLL else "any"
    _publish(rt, job_id, expect, seq, job.kind, outcome, cekura_status=job.cekura_status, error=error, polls=job.polls)


def _internal_error(step: Step, exc: Exception) -> None:
    """End a claimed job `failed`, once, when handling its step raised something unexpected.

    Retrying would not help: the same answer would raise again, and a retried message no longer owns the lease,
    so the job would only wait for the reconciler, start again at Cekura and finally time out.
    """
    log.exception("job_step_failed", phase=step.phase.value)
    reason = f"internal error while handling the {step.phase.value} step ({type(exc).__name__})"
    _finish(step, Outcome.FAILED, cekura_status=step.job.cekura_status, error=reason, polls=step.job.polls)


def _failed_call(step: Step, exc: CekuraError, *, polls: int | None = None) -> None:
    """Retry a transient failure with backoff (a 429 slows the whole fleet), or fail the job on a permanent one."""
    rt, job, kind = step.rt, step.job, step.kind
    reason = redact(str(exc), step.secrets)
    done_polls = job.polls if polls is None else polls - 1

    def fail(error: str) -> None:
        _finish(step, Outcome.FAILED, cekura_status=job.cekura_status, error=error, polls=done_polls)

    if isinstance(exc, PermanentError):
        fail(reason)
        return
    errors = job.errors
    if isinstance(exc, RateLimited):
        rt.store.cool_down(exc.retry_after_s)
        delay_s = exc.retry_after_s + random.uniform(0, DEFAULT_COOLDOWN_SPREAD_MS / 1000)
        metrics.RETRIES.labels(kind.name, "rate_limited").inc()
    else:
        errors += 1
        if errors >= rt.settings.cekura_max_consecutive_errors:
            fail(f"gave up after {errors} consecutive transient errors; last: {reason}")
            return
        delay_s = retry_delay(errors, rt.settings)
        metrics.RETRIES.labels(kind.name, "transient").inc()
    delay_ms = int(delay_s * 1000)  # advance.lua caps it at the deadline
    next_state = "queued" if step.phase is Phase.START else "polling"
    fields = {"errors": errors, "error": reason}
    with rt.broker.outbox() as retry:
        if step.phase is Phase.START:
            start.send_with_options(args=(step.job_id,), delay=delay_ms)
        else:
            poll.send_with_options(args=(step.job_id, step.seq + 1), delay=delay_ms)
        done = rt.store.advance(
            step.job_id, step.phase, step.seq, next_state=next_state, delay_ms=delay_ms, fields=fields, scheduled=retry
        )
    if done.verdict is AdvanceVerdict.OK:
        log.warning("cekura_call_retrying", reason=reason, attempt=errors, delay_s=round(delay_s, 3))


def _finish(
    step: Step,
    outcome: Outcome,
    *,
    cekura_status: str = "",
    result: dict[str, Any] | None = None,
    error: str = "",
    polls: int = 0,
) -> None:
    """End the claimed job with `outcome` and publish its one result event."""
    _publish(
        step.rt,
        step.job_id,
        step.phase.value,
        step.seq,
        step.kind.name,
        outcome,
        cekura_status=cekura_status,
        result=result,
        error=error,
        polls=polls,
        secrets=step.secrets,
    )


def _publish(
    rt: Runtime,
    job_id: str,
    expect: str,
    seq: int,
    kind_name: str,
    outcome: Outcome,
    *,
    cekura_status: str,
    error: str,
    polls: int,
    result: dict[str, Any] | None = None,
    secrets: tuple[str, ...] = (),
) -> None:
    fields = {
        "status": outcome.value,
        "cekura_status": redact(cekura_status, secrets),
        "result": redact(json.dumps(result, separators=(",", ":")), secrets) if result is not None else "",
        "error": redact(error, secrets),
        "polls": polls,
    }
    done = rt.store.finish(job_id, expect, seq, fields)
    if done.verdict is not FinishVerdict.OK:
        log.debug("finish_skipped", verdict=done.verdict.value)
        return
    duration = max(0.0, done.duration_ms / 1000)
    metrics.JOBS_FINISHED.labels(kind_name, outcome.value).inc()
    metrics.JOB_DURATION.labels(kind_name, outcome.value).observe(duration)
    level = log.info if outcome in (Outcome.COMPLETED, Outcome.NEEDS_INPUT) else log.warning
    level(
        "job_finished",
        outcome=outcome.value,
        cekura_status=fields["cekura_status"],
        polls=polls,
        duration_s=round(duration, 3),
        error=fields["error"] or None,
    )


__all__ = ["Params", "Step", "cancel_remote", "poll", "start"]
