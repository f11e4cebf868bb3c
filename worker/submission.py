"""Submitting and cancelling jobs: the shared path behind the Python client, the CLI and the request stream.

It needs only the job store and a broker to enqueue on, not the actors, so producers never import them.
"""

from __future__ import annotations

from dataclasses import dataclass

import dramatiq
import structlog

from actors import names
from worker import metrics
from worker.requests import JobRequest, check_job_id
from worker.store import JobStore

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
    """Record the job (once per job id) and send its start message."""
    secrets = request.kind.secrets(request.params)
    created, state = store.submit(
        request.job_id,
        request.kind.name,
        request.kind.public_params(request.params),
        request.metadata,
        request.deadline_s,
        secrets,
    )
    if state == "queued":
        # Also for an existing queued job: its first start message may have been lost; duplicates are harmless.
        _send(broker, store.settings.cekura_queue, names.START, request.job_id)
    if created:
        metrics.JOBS_SUBMITTED.labels(request.kind.name).inc()
        log.info("job_submitted", job_id=request.job_id, kind=request.kind.name, deadline_s=request.deadline_s)
    else:
        log.info("job_already_submitted", job_id=request.job_id, kind=request.kind.name, state=state)
    return Submitted(request.job_id, created, state)


def cancel(store: JobStore, broker: dramatiq.Broker, job_id: str) -> Cancelled:
    """End a job `cancelled` now; a running scenario-agent job is also cancelled at Cekura."""
    check_job_id(job_id)
    done = store.finish(job_id, "any", 0, {"status": "cancelled", "error": "cancelled by request"})
    if done.verdict == "gone":
        return Cancelled(job_id, "unknown")
    if done.verdict == "done":
        return Cancelled(job_id, "already_finished", done.status)
    metrics.JOBS_FINISHED.labels(done.kind, "cancelled").inc()
    log.info("job_cancelled", job_id=job_id, kind=done.kind, prior_state=done.prior_state)
    # A job still `starting` has no session yet: the start actor cancels it at Cekura once the call returns.
    if done.prior_state == "polling" and done.session_id:
        from actors.kinds import KINDS

        if KINDS[done.kind].cancel_path:
            _send(broker, store.settings.cekura_queue, names.CANCEL_REMOTE, job_id, done.kind, int(done.session_id))
    return Cancelled(job_id, "cancelled", "cancelled")
