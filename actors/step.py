"""One claimed step of one job, and the ways a step ends a job: its outcome and its one result event.

Kept apart from the actors (`actors/jobs.py`) so that it binds nothing to the broker: everything here writes
through the job store, never sends a message.
"""

from __future__ import annotations

import json
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

import structlog

from actors.kinds import KINDS, JobKind, Outcome
from actors.names import CANCEL_REMOTE as CANCEL
from worker import tracing
from worker.ops import metrics
from worker.redact import redact
from worker.runtime.app import Runtime
from worker.store.records import Claim, FinishVerdict, JobRecord, Phase, RemoteCancel

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Step:
    """One claimed step of one job: what every helper needs, passed as one value."""

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

    def next_poll_s(self, poll: int, elapsed_s: float) -> float:
        """Seconds until poll number `poll`: the kind's schedule (declared or learned). With CEKURA_WEBHOOKS on, a
        kind Cekura announces by webhook is polled only as a safety net, at most every CEKURA_WEBHOOK_SAFETY_NET_S:
        its webhook makes it poll at once (`worker.webhooks`)."""
        delay_s = self.rt.polling.next_delay_s(self.kind.name, self.kind.poll_plan, poll, elapsed_s)
        settings = self.rt.settings
        if settings.cekura_webhooks and self.kind.webhooks:
            return max(delay_s, settings.cekura_webhook_safety_net_s)
        return delay_s

    def elapsed_s(self) -> float:
        """Seconds since the start call answered (or since an answer was sent), on the Redis clock."""
        return max(0.0, (self.claim.now_ms - self.job.started_ms) / 1000) if self.job.started_ms else 0.0


def make_step(rt: Runtime, job_id: str, phase: Phase, claim: Claim, age_s: float = 0.0) -> Step:
    assert claim.job is not None
    step = Step(rt, job_id, phase, claim, claim.job, KINDS[claim.job.kind], age_s)
    if tracing.enabled:
        tracing.enter(step)
    return step


def finish(
    step: Step,
    outcome: Outcome,
    *,
    cekura_status: str = "",
    result: dict[str, Any] | None = None,
    error: str = "",
    polls: int = 0,
    extra: dict[str, Any] | None = None,
    stop_remote: bool = False,
) -> None:
    """End the claimed job with `outcome` and publish its one result event; `extra`: more record fields;
    `stop_remote`: the operation may still run at Cekura, stop it there (see `publish`)."""
    publish(
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
        extra=extra,
        stop_remote=stop_remote,
    )


def fail(step: Step, error: str, *, polls: int | None = None, extra: dict[str, Any] | None = None) -> None:
    """End the claimed job `failed` with `error`, keeping its last Cekura status."""
    finish(
        step,
        Outcome.FAILED,
        cekura_status=step.job.cekura_status,
        error=error,
        polls=step.job.polls if polls is None else polls,
        extra=extra,
        stop_remote=True,
    )


def internal_error(step: Step, exc: Exception) -> None:
    """End a claimed job `failed`, once, when handling its step raised something unexpected.

    Retrying would not help: the same answer would raise again, and a retried message no longer owns the lease,
    so the job would only wait for the reconciler, start again at Cekura and finally time out.
    """
    # The traceback's text may quote the job's secrets (an exception's message): masked with them, as a field.
    trace = redact("".join(traceback.format_exception(exc)), step.secrets)
    log.error("job_step_failed", phase=step.phase.value, exception=trace)
    fail(step, f"internal error while handling the {step.phase.value} step ({type(exc).__name__})")


def time_out(rt: Runtime, job_id: str, phase: Phase, seq: int) -> None:
    """End a job whose deadline passed `timed_out` (the claim that found it so holds no lease)."""
    fields = rt.store.get(job_id) or {}
    job = JobRecord.from_fields(fields)
    structlog.contextvars.bind_contextvars(kind=job.kind or None, progress_id=job.progress_id or None)
    error = f"deadline of {job.deadline_s:g}s passed before Cekura reported a terminal status"
    if fields.get("state") == "waiting":
        error = f"deadline of {job.deadline_s:g}s passed while waiting for an answer to: {fields.get('question', '')}"
    if fields.get("answer"):
        error = f"deadline of {job.deadline_s:g}s passed before the answer could be sent to Cekura"
    # A start message may time out a job in any state; a poll message only the poll it was sent for.
    expect = Phase.POLL.value if phase is Phase.POLL else "any"
    publish(
        rt,
        job_id,
        expect,
        seq,
        job.kind,
        Outcome.TIMED_OUT,
        cekura_status=job.cekura_status,
        error=error,
        polls=job.polls,
        stop_remote=True,
    )


def publish(
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
    extra: dict[str, Any] | None = None,
    stop_remote: bool = False,
) -> None:
    """Write the job's end and its one result event. With `stop_remote` (a job failed or timed out while its
    operation may still run at Cekura), a kind that can stop it there also gets its `cancel_remote` message, written
    by the same script, as a cancel request's is: a job polling or waiting with a session or progress id, or one
    still looking for its lost start by its tag (`cancel_remote` then looks the run up)."""
    fields: dict[str, Any] = {
        "status": outcome.value,
        "cekura_status": redact(cekura_status, secrets),
        "result": redact(json.dumps(result, separators=(",", ":")), secrets) if result is not None else "",
        "error": redact(error, secrets),
        "polls": polls,
        **(extra or {}),
    }
    kind = KINDS.get(kind_name)
    remote = None
    if stop_remote and kind is not None and kind.cancel_path:
        looks = frozenset({kind_name}) if kind.lookup_path else frozenset()  # it may still be looking for its run
        remote = RemoteCancel(
            frozenset({kind_name}), rt.settings.cekura_queue, rt.settings.key("dramatiq"), CANCEL, lookup_kinds=looks
        )
    began_ns = time.time_ns() if tracing.enabled else 0
    done = rt.store.finish(job_id, expect, seq, fields, remote_cancel=remote, message_id=str(uuid.uuid4()))
    if done.remote_cancel:
        log.info("cekura_cancel_sent", reason="the job ended while its operation may still run at Cekura")
    if done.verdict is not FinishVerdict.OK:
        log.debug("finish_skipped", verdict=done.verdict.value)
        return
    if tracing.enabled:
        details = {"error": fields["error"], "polls": polls, "published_ns": began_ns, "entry_id": done.entry_id}
        tracing.ended(done.trace, job_id, kind_name, outcome.value, **details)
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


def mark_start(step: Step) -> bool:
    """Mark a start that must not repeat as sent, fenced by this attempt's claim; True when the call may go.

    An attempt paused past its lease (SIGSTOP, a VM freeze) whose step another attempt took over finds the
    claim no longer its own and makes no call: the other attempt's start is the job's one start."""
    mark = step.rt.store.mark_start_sent(step.job_id, step.claim)
    if mark == "ok":
        return True
    if mark == "sent":  # an earlier attempt marked it while this one held the claim: it may have reached Cekura
        fail(step, unknown_start("another attempt may have sent it"))
    else:
        log.warning("start_superseded", result=mark, hint="this attempt's claim ended before its call: no call made")
    return False


def unknown_start(reason: str) -> str:
    return (
        f"the start call's outcome is unknown ({reason}): Cekura may have started the operation, and it was not "
        "sent again because this kind's start is not safe to repeat (it would start a duplicate)"
    )
