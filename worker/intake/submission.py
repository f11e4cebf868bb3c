"""Submitting and cancelling jobs: the shared path behind the Python client, the CLI and the request stream.

It needs only the job store and a broker to enqueue on, not the actors, so producers never import them.

Once a job is recorded, a submission fails only when Redis can't be reached (`redis.ConnectionError` or
`TimeoutError`), which the caller retries: the job is found and its start sent again. Any other failure to send the
start is logged and swallowed, because the job exists and will run: the reconciler sends the start of a job still
queued after `CEKURA_RECONCILE_GRACE_S`. A caller that turned such an error into a rejection would publish a
`rejected` event for a job that goes on to finish.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import dramatiq
import redis
import structlog

from actors import names
from worker.intake.requests import JobRequest, check_job_id
from worker.ops import metrics
from worker.store.jobs import JobStore, RemoteCancel, not_a_job

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Submitted:
    """The job a submission refers to; `created` is False when the job id already existed."""

    job_id: str
    created: bool
    state: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    """What a cancel request did: `cancelled`, `already_finished` (with the job's outcome) or `unknown`."""

    job_id: str
    result: str
    status: str = ""

    @property
    def message(self) -> str:
        if self.result == "cancelled":
            return f"job {self.job_id} cancelled"
        if self.result == "already_finished":
            return f"job {self.job_id} had already finished ({self.status}); nothing to cancel"
        return f"no job {self.job_id} is known (never submitted, or its record expired)"


def _send(broker: dramatiq.Broker, queue: str, actor_name: str, *args: object) -> None:
    broker.enqueue(dramatiq.Message(queue_name=queue, actor_name=actor_name, args=args, kwargs={}, options={}))


def submit(store: JobStore, broker: dramatiq.Broker, request: JobRequest) -> Submitted:
    """Record the job (once per job id) and send its start message; after recording, raises only Redis
    connection errors (see the module docstring)."""
    secrets = request.kind.secrets(request.params)
    created, state = store.submit(
        request.job_id,
        request.kind.name,
        request.public_params,
        request.metadata,
        request.deadline_s,
        secrets,
    )
    if created:
        metrics.JOBS_SUBMITTED.labels(request.kind.name).inc()
        log.info("job_submitted", job_id=request.job_id, kind=request.kind.name, deadline_s=request.deadline_s)
    else:
        log.info("job_already_submitted", job_id=request.job_id, kind=request.kind.name, state=state)
    if state == "queued":
        # Also for an existing queued job: its first start message may have been lost; duplicates are harmless.
        try:
            _send(broker, store.settings.cekura_queue, names.START, request.job_id)
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception:
            log.exception(
                "start_enqueue_failed",
                job_id=request.job_id,
                kind=request.kind.name,
                hint="the reconciler sends the start once the job is overdue",
            )
    return Submitted(request.job_id, created, state)


def cancel(store: JobStore, broker: dramatiq.Broker, job_id: str) -> Cancelled:
    """End a job `cancelled` now; a running job of a kind that can be stopped at Cekura (scenario agent) also gets
    its `cancel_remote` message, written by the same script that records the cancel, so neither is lost alone.

    Raises `InvalidRequest` when the job id's key holds something other than a job (so the request stream
    publishes a `rejected` event and the client raises): nothing was cancelled, and no event was written."""
    from actors.kinds import KINDS

    check_job_id(job_id)
    remote = RemoteCancel(
        kinds=frozenset(name for name, kind in KINDS.items() if kind.cancel_path),
        queue_name=store.settings.cekura_queue,
        namespace=store.settings.key("dramatiq"),
        actor_name=names.CANCEL_REMOTE,
    )
    fields = {"status": "cancelled", "error": "cancelled by request"}
    done = store.finish(job_id, "any", 0, fields, remote_cancel=remote, message_id=str(uuid.uuid4()))
    if done.verdict == "gone":
        return Cancelled(job_id, "unknown")
    if done.verdict == "done":
        return Cancelled(job_id, "already_finished", done.status)
    if done.verdict == "corrupt":  # not a job: refused like a submit with this id, not reported cancelled
        raise not_a_job(job_id)
    metrics.JOBS_FINISHED.labels(done.kind, "cancelled").inc()
    log.info("job_cancelled", job_id=job_id, kind=done.kind, prior_state=done.prior_state)
    # A job still `starting` has no session yet: the start actor cancels it at Cekura once the call returns.
    if done.remote_cancel:
        wakeup = getattr(broker, "wakeup", None)  # this process's consumer, if it has one, takes it at once
        if wakeup is not None:
            wakeup.set()
    return Cancelled(job_id, "cancelled", "cancelled")
