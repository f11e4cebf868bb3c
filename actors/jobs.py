"""The actors: start a Cekura operation, poll its progress by re-sending themselves with a delay, cancel it.

Every actor is safe to run twice. Each step first *claims* the job in Redis: a duplicate or out-of-date
message finds the claim taken or its `seq` superseded and does nothing. A poll message normally arrives
claimed already (the broker's fetch made the claim as it popped the message, saving a round trip); otherwise,
and for start messages, the actor claims with `JobStore.claim`. A step that doesn't
end the job sends its next message with `send_with_options(delay=...)` inside `broker.outbox()`, and
`advance` writes that message together with the step's state in one atomic script; a step that ends the job
writes the outcome and the result event in one atomic `finish`. If a worker dies mid-step (or holding a
message), the reconciler re-sends the job's message once it is overdue.
"""

from __future__ import annotations

import json
import random
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
from worker.store.jobs import Claim, Phase

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


@dramatiq.actor(actor_name=names.START, queue_name=_QUEUE, max_retries=3, time_limit=DEFAULT_TIME_LIMIT_MS)
def start(job_id: str, reserved: bool = False) -> None:
    """Call the kind's start endpoint once, record the progress id and schedule the first poll."""
    rt = runtime()
    claim = rt.store.claim(job_id, Phase.START, 0, reserved=reserved)
    if not _proceed(claim, job_id, Phase.START, 0):
        return
    assert claim.job is not None
    try:
        _start(rt, job_id, claim)
    except redis.RedisError:
        raise  # Dramatiq retries; should the lease be lost with it, the reconciler re-sends the job's step
    except Exception as exc:
        _internal_error(rt, job_id, Phase.START, claim, exc)


def _start(rt: Runtime, job_id: str, claim: Claim) -> None:
    assert claim.job is not None
    job, kind = claim.job, KINDS[claim.job["kind"]]
    structlog.contextvars.bind_contextvars(kind=kind.name)
    raw = json.loads(job["params"])
    secrets: tuple[str, ...] = ()
    if kind.secret_fields:
        stored = rt.store.secrets(job_id)
        raw.update(stored)
        secrets = tuple(stored.values())
    params = kind.validate(raw)
    seq = int(job["seq"])
    try:
        started = rt.cekura.start(kind, params, time_left_s=_time_left_s(claim))
    except CekuraError as exc:
        metrics.CEKURA_CALLS.labels("start", str(exc.status_code or "error")).inc()
        _failed_call(rt, job_id, kind, Phase.START, seq, job, exc, secrets=secrets)
        return
    metrics.CEKURA_CALLS.labels("start", "ok").inc()
    metrics.JOBS_STARTED.labels(kind.name).inc()
    delay_ms = _delay_ms(poll_delay(1, rt.settings), claim)
    fields: dict[str, Any] = {"progress_id": started.progress_id, "errors": 0, "error": "", "started_ms": claim.now_ms}
    if started.session_id is not None:
        fields["session_id"] = started.session_id
    with rt.broker.outbox() as first_poll:
        poll.send_with_options(args=(job_id, seq + 1), delay=delay_ms)
        verdict, _ = rt.store.advance(
            job_id, Phase.START, seq, next_state="polling", delay_ms=delay_ms, fields=fields, scheduled=first_poll
        )
    structlog.contextvars.bind_contextvars(progress_id=started.progress_id)
    if verdict == "ok":
        log.info(
            "job_started", progress_id=started.progress_id, session_id=started.session_id, next_poll_s=delay_ms / 1000
        )
    elif verdict == "finished" and kind.cancel_path and started.session_id is not None:
        # Cancelled while the start call was in flight: stop the operation Cekura just began.
        log.info("job_cancelled_during_start", session_id=started.session_id)
        cancel_remote.send(job_id, kind.name, started.session_id)
    elif verdict == "stale" and kind.cancel_path and started.session_id is not None:
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
        or (claim.verdict == "ok" and _time_left_s(claim, age_s) <= 0)
    ):
        claim = None  # it waited too long in this process, or past the deadline: ask again (the same owner may)
    if claim is None:
        claim = rt.store.claim(job_id, Phase.POLL, seq, reserved=reserved, owner=owner if fetched else "")
        age_s = 0.0
    if not _proceed(claim, job_id, Phase.POLL, seq):
        return
    try:
        _poll(rt, job_id, seq, claim, age_s)
    except redis.RedisError:
        raise  # Dramatiq retries; should the lease be lost with it, the reconciler re-sends the job's step
    except Exception as exc:
        _internal_error(rt, job_id, Phase.POLL, claim, exc)


def _poll(rt: Runtime, job_id: str, seq: int, claim: Claim, age_s: float = 0.0) -> None:
    assert claim.job is not None
    job, kind = claim.job, KINDS[claim.job["kind"]]
    progress_id = job.get("progress_id", "")
    polls = int(job.get("polls", "0")) + 1
    structlog.contextvars.bind_contextvars(kind=kind.name, progress_id=progress_id, poll=polls)
    params = kind.validate(json.loads(job["params"]))
    # A kind's own secrets (a provider key) stay in their key until the job ends, to mask Cekura echoing them.
    secrets = tuple(rt.store.secrets(job_id).values()) if kind.secret_fields else ()
    try:
        data = rt.cekura.progress(kind, params, progress_id, time_left_s=_time_left_s(claim, age_s))
    except CekuraError as exc:
        metrics.CEKURA_CALLS.labels("progress", str(exc.status_code or "error")).inc()
        _failed_call(rt, job_id, kind, Phase.POLL, seq, job, exc, polls=polls, secrets=secrets)
        return
    _PROGRESS_OK.inc()
    raw_status = data["status"]
    status = redact(raw_status, secrets)  # Cekura's words are stored and logged: never a secret in them
    stage = data.get(kind.stage_field) if kind.stage_field else None
    stage = redact(stage, secrets) if isinstance(stage, str) else None
    outcome = kind.outcome(raw_status)
    if outcome is not None:
        error = ""
        if outcome in (Outcome.FAILED, Outcome.CANCELLED):
            error = str(data.get("error") or f"Cekura reported status {status!r}")
        _finish(
            rt,
            job_id,
            Phase.POLL,
            seq,
            job,
            outcome,
            cekura_status=status,
            result=data,
            error=error,
            polls=polls,
            secrets=secrets,
        )
        return
    delay_ms = _delay_ms(poll_delay(polls + 1, rt.settings), claim)
    fields: dict[str, Any] = {"polls": polls, "cekura_status": status, "errors": 0}
    if stage is not None:
        fields["current_stage"] = stage
    with rt.broker.outbox() as next_poll:
        poll.send_with_options(args=(job_id, seq + 1), delay=delay_ms)
        verdict, changed = rt.store.advance(
            job_id, Phase.POLL, seq, next_state="polling", delay_ms=delay_ms, fields=fields, scheduled=next_poll
        )
    if verdict != "ok":
        log.debug("poll_superseded", verdict=verdict)
        return
    if changed == "1":
        if status not in kind.running:
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
    if claim.verdict == "ok":
        return True
    if claim.verdict == "wait":
        metrics.RATE_LIMIT_WAITS.labels(claim.wait_reason).inc()
        delay = claim.wait_ms
        if claim.wait_reason == "cooldown":
            delay += random.randint(0, DEFAULT_COOLDOWN_SPREAD_MS)
        delay = max(1, min(delay, claim.remaining_ms))  # the script capped the wait at the deadline; so is the spread
        reserved = claim.reserved
        if phase is Phase.START:
            start.send_with_options(args=(job_id, reserved), delay=delay)
        else:
            poll.send_with_options(args=(job_id, seq, reserved), delay=delay)
        log.debug("cekura_call_deferred", reason=claim.wait_reason, delay_ms=delay)
    elif claim.verdict == "expired":
        rt = runtime()
        job = rt.store.get(job_id) or {}
        kind = KINDS.get(job.get("kind", ""))
        structlog.contextvars.bind_contextvars(kind=job.get("kind"), progress_id=job.get("progress_id"))
        deadline_s = (int(job.get("deadline_ms", 0)) - int(job.get("submitted_ms", 0))) / 1000
        expect = Phase.POLL if phase is Phase.POLL else None
        _finish(
            rt,
            job_id,
            expect,
            seq,
            job,
            Outcome.TIMED_OUT,
            kind_name=kind.name if kind else job.get("kind", ""),
            cekura_status=job.get("cekura_status", ""),
            error=f"deadline of {deadline_s:g}s passed before Cekura reported a terminal status",
            polls=int(job.get("polls", 0)),
        )
    elif claim.verdict == "corrupt":
        log.error("job_record_unreadable", job_id=job_id, reason="its key holds something other than a job record")
    else:
        log.debug("message_ignored", verdict=claim.verdict, phase=phase.value, seq=seq)
    return False


def _internal_error(rt: Runtime, job_id: str, phase: Phase, claim: Claim, exc: Exception) -> None:
    """End a claimed job `failed`, once, when handling its step raised something unexpected.

    Retrying would not help: the same answer would raise again, and a retried message no longer owns the lease,
    so the job would only wait for the reconciler, start again at Cekura and finally time out.
    """
    assert claim.job is not None
    log.exception("job_step_failed", phase=phase.value)
    reason = f"internal error while handling the {phase.value} step ({type(exc).__name__})"
    job = claim.job
    _finish(
        rt,
        job_id,
        phase,
        int(job.get("seq", 0)),
        job,
        Outcome.FAILED,
        cekura_status=job.get("cekura_status", ""),
        error=reason,
        polls=int(job.get("polls", 0)),
    )


def _failed_call(
    rt: Runtime,
    job_id: str,
    kind: JobKind,
    phase: Phase,
    seq: int,
    job: dict[str, str] | Any,
    exc: CekuraError,
    *,
    polls: int | None = None,
    secrets: tuple[str, ...] = (),
) -> None:
    """Retry a transient failure with backoff (a 429 slows the whole fleet), or fail the job on a permanent one."""
    reason = redact(str(exc), secrets)
    done_polls = int(job.get("polls", 0)) if polls is None else polls - 1

    def fail(error: str) -> None:
        cekura_status = job.get("cekura_status", "")
        _finish(rt, job_id, phase, seq, job, Outcome.FAILED, cekura_status=cekura_status, error=error, polls=done_polls)

    if isinstance(exc, PermanentError):
        fail(reason)
        return
    errors = int(job.get("errors", 0))
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
    delay_ms = int(delay_s * 1000)
    next_state = "queued" if phase is Phase.START else "polling"
    fields = {"errors": errors, "error": reason}
    with rt.broker.outbox() as retry:
        if phase is Phase.START:
            start.send_with_options(args=(job_id,), delay=delay_ms)
        else:
            poll.send_with_options(args=(job_id, seq + 1), delay=delay_ms)
        verdict, _ = rt.store.advance(
            job_id, phase, seq, next_state=next_state, delay_ms=delay_ms, fields=fields, scheduled=retry
        )
    if verdict != "ok":
        return
    log.warning("cekura_call_retrying", reason=reason, attempt=errors, delay_s=round(delay_s, 3))


def _finish(
    rt: Runtime,
    job_id: str,
    expect: Phase | None,
    seq: int,
    job: dict[str, str] | Any,
    outcome: Outcome,
    *,
    kind_name: str | None = None,
    cekura_status: str = "",
    result: dict[str, Any] | None = None,
    error: str = "",
    polls: int = 0,
    secrets: tuple[str, ...] = (),
) -> None:
    fields = {
        "status": outcome.value,
        "cekura_status": redact(cekura_status, secrets),
        "result": redact(json.dumps(result, separators=(",", ":")), secrets) if result is not None else "",
        "error": redact(error, secrets),
        "polls": polls,
    }
    done = rt.store.finish(job_id, expect.value if expect else "any", seq, fields)
    if done.verdict != "ok":
        log.debug("finish_skipped", verdict=done.verdict)
        return
    kind = kind_name or job.get("kind", "")
    duration = max(0.0, done.duration_ms / 1000)
    metrics.JOBS_FINISHED.labels(kind, outcome.value).inc()
    metrics.JOB_DURATION.labels(kind, outcome.value).observe(duration)
    level = log.info if outcome in (Outcome.COMPLETED, Outcome.NEEDS_INPUT) else log.warning
    level(
        "job_finished",
        outcome=outcome.value,
        cekura_status=fields["cekura_status"],
        polls=polls,
        duration_s=round(duration, 3),
        error=fields["error"] or None,
    )


def _time_left_s(claim: Claim, age_s: float = 0.0) -> float:
    """Seconds before the job's deadline, from a claim made `age_s` ago (the bound on the call it allows)."""
    assert claim.job is not None
    return (int(claim.job.get("deadline_ms", 0)) - claim.now_ms) / 1000 - age_s


def _delay_ms(delay_s: float, claim: Claim) -> int:
    """The next poll delay in ms, never past the job's deadline (so it times out on time)."""
    assert claim.job is not None
    remaining = int(claim.job.get("deadline_ms", 0)) - claim.now_ms
    return max(1, min(int(delay_s * 1000), remaining))


__all__ = ["Params", "cancel_remote", "poll", "start"]
