"""The actors: start a Cekura operation, poll its progress by re-sending themselves with a delay, cancel it.

Every actor is safe to run twice. Each step first *claims* the job in Redis: a duplicate or out-of-date
message finds the claim taken or its `seq` superseded and does nothing. A poll message normally arrives
claimed already (the broker's fetch made the claim as it popped the message, saving a round trip); otherwise,
and for start messages, the actor claims with `JobStore.claim`. A step that doesn't end the job sends its next
message with `send_with_options(delay=...)` inside `broker.outbox()`, and `advance` writes that message together
with the step's state in one atomic script; a step that ends the job writes the outcome and the result event in
one atomic `finish` (`actors/step.py`). If a worker dies mid-step (or holding a message), the reconciler re-sends
the job's message once it is overdue.

A job whose operation asks a question (a kind's `waiting` status) publishes it and *waits*: its one message is
due at its deadline, and a poll of a waiting job does nothing until `answer.lua` records an answer and sends the
poll that delivers it to Cekura before polling on.

Importing this module binds the actors to the broker `setup()` made: only entry points import it, after setup
(`worker.runtime.app.bind_actors`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import dramatiq
import redis
import structlog

from actors import names
from actors.kinds import KINDS, Outcome, Params
from actors.lookup import find_to_cancel, index_result, look, lost_start, orphaned, start_tag
from actors.step import Step, fail, finish, internal_error, make_step, mark_start, time_out
from worker import tracing
from worker.cekura.backoff import retry_delay
from worker.errors import CekuraError, PermanentError, RateLimited, TransientError
from worker.ops import metrics
from worker.redact import redact
from worker.runtime.app import runtime
from worker.store.records import Advanced, AdvanceVerdict, Claim, ClaimVerdict, Phase

log = structlog.get_logger(__name__)

#: Hard limit on one message's run time; HTTP timeouts end every call well before it.
DEFAULT_TIME_LIMIT_MS = 120_000

#: Extra random delay spread over messages released together after a rate-limit cooldown.
DEFAULT_COOLDOWN_SPREAD_MS = 1000

#: A claim the fetch made is taken afresh when its message waited this share of the lease before running, so a
#: call (bounded by half the lease) always ends before its lease does.
DEFAULT_FETCHED_CLAIM_MAX_AGE = 0.25

#: The longest question kept in a job's record and its progress event.
DEFAULT_MAX_QUESTION_CHARS = 4000

_QUEUE = runtime().settings.cekura_queue

#: The per-poll counter's child, looked up once (`labels()` on every poll showed in profiles).
_PROGRESS_OK = metrics.CEKURA_CALLS.labels("progress", "ok")


def _run(body: Callable[[Step], None], step: Step) -> None:
    """Run a claimed step; anything unexpected ends the job `failed` once (see `internal_error`)."""
    try:
        body(step)
    except redis.RedisError:
        raise  # Dramatiq retries; should the lease be lost with it, the reconciler re-sends the job's step
    except Exception as exc:
        internal_error(step, exc)


@dramatiq.actor(actor_name=names.START, queue_name=_QUEUE, max_retries=3, time_limit=DEFAULT_TIME_LIMIT_MS)
def start(job_id: str, reserved: bool = False) -> None:
    """Call the kind's start endpoint once, record the progress id and schedule the first poll."""
    rt = runtime()
    claim = rt.store.claim(job_id, Phase.START, 0, reserved=reserved)
    if not _proceed(claim, job_id, Phase.START, 0):
        return
    _run(_start, make_step(rt, job_id, Phase.START, claim))


def _with_secrets(step: Step) -> tuple[Step, Params]:
    """The step's params, with the job's own secrets (a provider key) merged in, and the step masking them."""
    raw = json.loads(step.job.params)
    if not step.kind.secret_fields:
        return step, step.kind.validate(raw)
    stored = step.rt.store.secrets(step.job_id)  # kept until the job ends, to mask Cekura echoing them
    return replace(step, secrets=step.kind.secret_values(stored)), step.kind.with_secrets(raw, stored)


def _start(step: Step) -> None:
    rt, job_id, kind = step.rt, step.job_id, step.kind
    structlog.contextvars.bind_contextvars(kind=kind.name)
    if step.job.start_sent and not kind.repeatable_start:
        # An earlier attempt claimed this start and never recorded its end (its worker stopped mid-call).
        lost_start(step, "an earlier attempt stopped during the start call", _next_poll)
        return
    step, params = _with_secrets(step)
    if not kind.repeatable_start and not mark_start(step):
        return
    try:
        started = rt.cekura.start(kind, params, tag=start_tag(step), time_left_s=step.time_left_s())
    except CekuraError as exc:
        metrics.CEKURA_CALLS.labels("start", str(exc.status_code or "error")).inc()
        _failed_call(step, exc)
        return
    metrics.CEKURA_CALLS.labels("start", "ok").inc()
    metrics.JOBS_STARTED.labels(kind.name).inc()
    delay_ms = step.delay_ms(step.next_poll_s(1, 0.0))
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
        if kind.webhooks:
            index_result(step, started.progress_id)
        log.info(
            "job_started", progress_id=started.progress_id, session_id=started.session_id, next_poll_s=delay_ms / 1000
        )
    elif kind.cancel_path and done.verdict in (AdvanceVerdict.FINISHED, AdvanceVerdict.STALE):
        orphaned(step, started.session_id, started.progress_id, done.verdict, cancel_remote.send)


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
    step = make_step(rt, job_id, Phase.POLL, claim, age_s)
    _run(_deliver_answer if step.job.answer else _poll, step)


def _poll(step: Step) -> None:
    rt, kind, job = step.rt, step.kind, step.job
    if not job.progress_id and kind.lookup_path:  # its start answer was lost: look for it by its tag
        look(step, _next_poll)
        return
    polls = job.polls + 1
    structlog.contextvars.bind_contextvars(kind=kind.name, progress_id=job.progress_id, poll=polls)
    step, params = _with_secrets(step)
    try:
        raw_status, data = rt.cekura.progress(kind, params, job.progress_id, time_left_s=step.time_left_s())
    except CekuraError as exc:
        metrics.CEKURA_CALLS.labels("progress", str(exc.status_code or "error")).inc()
        _failed_call(step, exc, polls=polls)
        return
    _PROGRESS_OK.inc()
    status = redact(raw_status, step.secrets)  # Cekura's words are stored and logged: never a secret in them
    outcome = kind.outcome(raw_status)
    if outcome is not None:
        _observe(step)
        error = ""
        if kind.verdict is not None:
            outcome, error = kind.verdict(outcome, data)
        if outcome in (Outcome.FAILED, Outcome.CANCELLED) and not error:
            error = str(data.get("error") or f"Cekura reported status {status!r}")
        finish(step, outcome, cekura_status=status, result=data, error=error, polls=polls)
        return
    question = _question(step, data) if raw_status in kind.waiting else ""
    if question:
        _wait_for_answer(step, status, question, polls)
        return
    stage = data.get(kind.stage_field) if kind.stage_field else None
    stage = redact(stage, step.secrets) if isinstance(stage, str) else None
    elapsed_s, progress = step.elapsed_s(), kind.progress(data)  # issue 21: polls put off while far from the end
    delay_s = rt.polling.stretch(kind.name, kind.poll_plan, step.next_poll_s(polls + 1, elapsed_s), elapsed_s, progress)
    delay_ms = step.delay_ms(delay_s)
    fields: dict[str, Any] = {"polls": polls, "cekura_status": status, "errors": 0}
    if stage is not None:
        fields["current_stage"] = stage
    done = _next_poll(step, "polling", delay_ms, fields)
    if done.verdict is not AdvanceVerdict.OK:
        log.debug("poll_superseded", verdict=done.verdict.value)
        return
    if done.changed:
        if raw_status not in kind.running:
            log.warning("unexpected_cekura_status", cekura_status=status, hint="treated as still running")
        log.info("job_progress", cekura_status=status, current_stage=stage, next_poll_s=delay_ms / 1000)
    else:
        log.debug("job_polled", cekura_status=status, next_poll_s=delay_ms / 1000)


def _next_poll(step: Step, next_state: str, delay_ms: int, fields: dict[str, Any]) -> Advanced:
    """Record this step and write the job's next poll message, due in `delay_ms`, in one atomic step."""
    if tracing.enabled:
        tracing.note_advance(step, fields)
    with step.rt.broker.outbox() as scheduled:
        poll.send_with_options(args=(step.job_id, step.seq + 1), delay=delay_ms)
        return step.rt.store.advance(
            step.job_id,
            step.phase,
            step.seq,
            next_state=next_state,
            delay_ms=delay_ms,
            fields=fields,
            scheduled=scheduled,
        )


def _observe(step: Step) -> None:
    """Tell the polling schedule when this operation finished: after the previous poll, by this one."""
    job = step.job
    if job.started_ms:
        low_s = max(0.0, (job.updated_ms - job.started_ms) / 1000)
        step.rt.polling.observe(step.kind.name, low_s, max(low_s, step.elapsed_s()))


def _question(step: Step, data: dict[str, Any]) -> str:
    """The question of a waiting answer, masked and cut; empty when Cekura sent none (then the word is taken for
    "still running": a job must never wait for an answer to nothing)."""
    try:
        text = step.kind.question_of(data)
    except Exception as exc:  # a free-form answer no rule foresaw (its text may quote the answer: masked)
        log.warning("question_unreadable", error=redact(f"{type(exc).__name__}: {exc}", step.secrets))
        text = json.dumps(data, ensure_ascii=False)
    # Masked before it is cut: a secret straddling the cut would leave a prefix no form of it matches.
    return redact(text, step.secrets)[:DEFAULT_MAX_QUESTION_CHARS]


def _wait_for_answer(step: Step, status: str, question: str, polls: int) -> None:
    """Cekura asked a question: publish it and wait for an answer; the one message left is due at the deadline."""
    delay_ms = step.delay_ms(step.time_left_s())
    fields = {"polls": polls, "cekura_status": status, "errors": 0, "question": question}
    done = _next_poll(step, "waiting", delay_ms, fields)
    if done.verdict is AdvanceVerdict.OK:
        log.info("job_waiting_for_answer", cekura_status=status, question=question, deadline_in_s=delay_ms / 1000)


def _deliver_answer(step: Step) -> None:
    """Send the recorded answer to Cekura, then poll on from the kind's first interval.

    An earlier attempt may have sent it and lost Cekura's reply (a timeout, a worker killed mid-call): Cekura would
    refuse it a second time. So such an attempt first asks Cekura whether it still waits, and sends the answer only
    if it does."""
    rt, kind, job = step.rt, step.kind, step.job
    structlog.contextvars.bind_contextvars(kind=kind.name, progress_id=job.progress_id)
    step, params = _with_secrets(step)
    try:
        if job.answer_sent:
            raw_status, _ = rt.cekura.progress(kind, params, job.progress_id, time_left_s=step.time_left_s())
            _PROGRESS_OK.inc()
            if raw_status not in kind.waiting:
                log.info("job_answer_already_taken", cekura_status=redact(raw_status, step.secrets))
                _answered(step)
                return
        rt.cekura.answer(kind, job.progress_id, job.answer, secrets=step.secrets, time_left_s=step.time_left_s())
    except CekuraError as exc:
        metrics.CEKURA_CALLS.labels("answer", str(exc.status_code or "error")).inc()
        _failed_call(step, exc, polls=job.polls + 1)  # the answer stays recorded: the retry sends it again
        return
    metrics.CEKURA_CALLS.labels("answer", "ok").inc()
    _answered(step)


def _answered(step: Step) -> None:
    """Cekura has the answer: forget it and poll on, counting the operation's time afresh."""
    delay_ms = step.delay_ms(step.next_poll_s(1, 0.0))
    # The operation runs again from here: the schedule (and what it learns) counts from the answer.
    fields = {
        "answer": "",
        "answer_sent": "",
        "question": "",
        "errors": 0,
        "error": "",
        "started_ms": step.claim.now_ms,
    }
    done = _next_poll(step, "polling", delay_ms, fields)
    if done.verdict is AdvanceVerdict.OK:
        log.info("job_answer_sent", next_poll_s=delay_ms / 1000)


@dramatiq.actor(actor_name=names.CANCEL_REMOTE, queue_name=_QUEUE, max_retries=5, time_limit=DEFAULT_TIME_LIMIT_MS)
def cancel_remote(job_id: str, kind_name: str, session_id: int | None = None, progress_id: str = "") -> None:
    """Ask Cekura to stop a cancelled job's operation (by its session or its progress id, as the kind says)."""
    rt = runtime()
    kind = KINDS[kind_name]
    structlog.contextvars.bind_contextvars(kind=kind_name)
    if tracing.enabled:  # before any call: the lookup below is one of the job's calls too
        tracing.enter_job(rt.store, job_id, kind_name)
    if session_id is None and not progress_id and kind.lookup_path:  # cancelled while its lost start was looked for
        progress_id = find_to_cancel(rt, job_id, kind)
        if not progress_id:
            return
    try:
        answer = rt.cekura.cancel(kind, session_id, progress_id)
    except PermanentError as exc:
        metrics.CEKURA_CALLS.labels("cancel", str(exc.status_code or "error")).inc()
        log.warning("cekura_cancel_refused", session_id=session_id, error=redact(str(exc)))
        return
    except CekuraError as exc:  # transient: Dramatiq's Retries middleware tries again with backoff
        metrics.CEKURA_CALLS.labels("cancel", str(exc.status_code or "error")).inc()
        log.warning("cekura_cancel_retrying", session_id=session_id, error=redact(str(exc)))
        raise
    metrics.CEKURA_CALLS.labels("cancel", "ok").inc()
    log.info("cekura_cancelled", session_id=session_id, progress_id=progress_id, success=answer.get("success"))


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
        time_out(runtime(), job_id, phase, seq)
    elif claim.verdict is ClaimVerdict.CORRUPT:
        log.error("job_record_unreadable", job_id=job_id, reason="its key holds something other than a job record")
    else:
        log.debug("message_ignored", verdict=claim.verdict.value, phase=phase.value, seq=seq)
    return False


def _failed_call(step: Step, exc: CekuraError, *, polls: int | None = None) -> None:
    """Retry a transient failure with backoff (a 429 slows the whole fleet), or fail the job on a permanent one,
    or on a start that may have reached Cekura when the kind's start must not be repeated."""
    rt, job, kind = step.rt, step.job, step.kind
    reason = redact(str(exc), step.secrets)
    done_polls = job.polls if polls is None else polls - 1
    if isinstance(exc, PermanentError):
        extra: dict[str, Any] = {}
        if step.phase is Phase.START and not kind.repeatable_start:
            if exc.refused:
                extra["start_sent"] = ""  # Cekura refused it: no operation runs there (a retry needs no --force)
            elif exc.status_code is not None:  # an answer that can't be used (too large, a 204): Cekura may have acted
                said = "accepted it" if exc.status_code in (200, 201, 202) else f"answered HTTP {exc.status_code}"
                lost_start(step, f"Cekura {said} but its answer could not be used: {reason}", _next_poll)
                return
        fail(step, reason, polls=done_polls, extra=extra)
        return
    unsent = isinstance(exc, TransientError) and not exc.maybe_sent
    if step.phase is Phase.START and not kind.repeatable_start and not unsent:
        lost_start(step, reason, _next_poll)
        return
    errors = job.errors
    if isinstance(exc, RateLimited):
        rt.store.cool_down(exc.retry_after_s)
        delay_s = exc.retry_after_s + random.uniform(0, DEFAULT_COOLDOWN_SPREAD_MS / 1000)
        metrics.RETRIES.labels(kind.name, "rate_limited").inc()
    else:
        errors += 1
        if errors >= rt.settings.cekura_max_consecutive_errors:
            fail(step, f"gave up after {errors} consecutive transient errors; last: {reason}", polls=done_polls)
            return
        delay_s = retry_delay(errors, rt.settings)
        metrics.RETRIES.labels(kind.name, "transient").inc()
    delay_ms = int(delay_s * 1000)  # advance.lua caps it at the deadline
    next_state = "queued" if step.phase is Phase.START else "polling"
    fields: dict[str, Any] = {"errors": errors, "error": reason}
    if step.phase is Phase.START and unsent:
        fields["start_sent"] = ""  # nothing reached Cekura: the next attempt is a first attempt
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


__all__ = ["Params", "Step", "cancel_remote", "poll", "start"]
