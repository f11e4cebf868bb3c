"""Submitting, cancelling and retrying jobs: the shared path behind the Python client, the CLI and the request stream.

It needs only the job store and a broker to enqueue on, not the actors, so producers never import them.

Once a job is recorded, a submission fails only when Redis can't be reached (`redis.ConnectionError` or
`TimeoutError`), which the caller retries: the job is found and its start sent again. Any other failure to send the
start is logged and swallowed, because the job exists and will run: the reconciler sends the start of a job still
queued after `CEKURA_RECONCILE_GRACE_S`. A caller that turned such an error into a rejection would publish a
`rejected` event for a job that goes on to finish.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
import structlog

from actors import names
from worker import tracing
from worker.errors import InvalidRequest
from worker.intake import requests
from worker.intake.requests import JobRequest, check_job_id
from worker.ops import metrics
from worker.store.jobs import JobStore, RemoteCancel, not_a_job
from worker.store.records import JobRecord

log = structlog.get_logger(__name__)

#: The most `<job_id>-retry-<n>` ids a retry tries before asking for an explicit new job id.
DEFAULT_MAX_RETRY_NUMBER = 1000


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


@dataclass(frozen=True, slots=True)
class Retried:
    """What a retry request did: `submitted` (new job `job_id`, or the one an earlier identical retry made), or why
    it was refused: `unknown`, `active`, `secret` (a kind whose secret params were never stored), `unknown_start`
    (a start that must not repeat and may have reached Cekura; `force` overrides it) or `taken`."""

    retry_of: str
    result: str
    job_id: str = ""
    detail: str = ""

    @classmethod
    def refusal(cls, job_id: str, record: dict[str, str], *, force: bool = False) -> Retried | None:
        """Why a retry of the job with this record (`state`, `kind`, `start_sent`, `progress_id` are read) is
        refused before anything is made, or None when it may go ahead; `dead list` asks the same question."""
        from actors.kinds import KINDS

        if record.get("state") != "finished":
            return cls(job_id, "active", detail=record.get("state", ""))
        kind = KINDS.get(record.get("kind", ""))
        if kind is not None and kind.secret_fields:
            return cls(job_id, "secret", detail=kind.name)
        # The start may have reached Cekura and no progress id came back: the first operation may still run there.
        unknown = record.get("start_sent") == "1" and not record.get("progress_id")
        if not force and kind is not None and not kind.repeatable_start and unknown:
            return cls(job_id, "unknown_start", detail=kind.name)
        return None

    @property
    def message(self) -> str:
        if self.result == "submitted":
            return f"job {self.retry_of} retried as job {self.job_id}"
        if self.result == "unknown":
            return f"no job {self.retry_of} is known (never submitted, or its record expired): nothing to retry"
        if self.result == "active":
            return f"job {self.retry_of} is still {self.detail}: retry it once it has finished (or cancel it first)"
        if self.result == "secret":
            return (
                f"job {self.retry_of} can't be retried: {self.detail} jobs take secret params, which are never "
                "stored; submit a new job with `submit`, giving the secret again"
            )
        if self.result == "unknown_start":
            return (
                f"job {self.retry_of}'s start may have reached Cekura (its outcome is unknown): the first operation "
                "may still be running there, and a retry may start a second one; retry with --force (force=True) to "
                "do so anyway"
            )
        return f"job_id {self.job_id} is already taken by another job; choose another new job id"


def _send(broker: dramatiq.Broker, queue: str, actor_name: str, *args: object) -> None:
    broker.enqueue(dramatiq.Message(queue_name=queue, actor_name=actor_name, args=args, kwargs={}, options={}))


def submit(store: JobStore, broker: dramatiq.Broker, request: JobRequest, *, link: str = "") -> Submitted:
    """Record the job (once per job id) and send its start message; after recording, raises only Redis
    connection errors (see the module docstring). The job continues the request's trace, or, in a process that
    traces, begins one; `link`: the `traceparent` of the job a retry retries."""
    secrets = request.kind.secrets(request.params)
    root = tracing.new_root(request.kind.name) if tracing.enabled and request.trace is None else None
    trace = tracing.job_fields(request.trace, root=root, link=link)
    created, state = store.submit(
        request.job_id,
        request.kind.name,
        request.public_params,
        request.metadata,
        request.deadline_s,
        secrets,
        trace,
    )
    if created:
        metrics.JOBS_SUBMITTED.labels(request.kind.name).inc()
        ids = tracing.log_ids(trace.get("traceparent", "")) if tracing.enabled else {}
        log.info("job_submitted", job_id=request.job_id, kind=request.kind.name, deadline_s=request.deadline_s, **ids)
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
    store.wait_replicated()  # with CEKURA_REDIS_MIN_REPLICAS: accepted means on the replicas too
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
        lookup_kinds=frozenset(name for name, kind in KINDS.items() if kind.cancel_path and kind.lookup_path),
    )
    fields = {"status": "cancelled", "error": "cancelled by request"}
    began_ns = time.time_ns() if tracing.enabled else 0
    done = store.finish(job_id, "any", 0, fields, remote_cancel=remote, message_id=str(uuid.uuid4()))
    if done.verdict == "gone":
        return Cancelled(job_id, "unknown")
    if done.verdict == "done":
        return Cancelled(job_id, "already_finished", done.status)
    if done.verdict == "corrupt":  # not a job: refused like a submit with this id, not reported cancelled
        raise not_a_job(job_id)
    metrics.JOBS_FINISHED.labels(done.kind, "cancelled").inc()
    ids: dict[str, str] = {}
    if tracing.enabled and done.trace is not None:
        polls, entry = done.trace.polls_before, done.entry_id
        details = {"error": fields["error"], "polls": polls, "published_ns": began_ns, "entry_id": entry}
        tracing.ended(done.trace, job_id, done.kind, "cancelled", bind_logs=False, **details)
        ids = tracing.log_ids(done.trace.traceparent)
    log.info("job_cancelled", job_id=job_id, kind=done.kind, prior_state=done.prior_state, **ids)
    # A job still `starting` has no session yet: the start actor cancels it at Cekura once the call returns.
    if done.remote_cancel:
        wakeup = getattr(broker, "wakeup", None)  # this process's consumer, if it has one, takes it at once
        if wakeup is not None:
            wakeup.set()
    return Cancelled(job_id, "cancelled", "cancelled")


@dataclass(frozen=True, slots=True)
class Answered:
    """What an answer did: `ok` when it was recorded and its delivery scheduled, else why not (`answer.lua`)."""

    job_id: str
    result: str
    detail: str = ""

    @property
    def message(self) -> str:
        return {
            "ok": f"answer recorded for job {self.job_id}: the worker sends it to Cekura and polls on",
            "gone": f"no job {self.job_id} is known (never submitted, or its record expired)",
            "finished": f"job {self.job_id} has already ended ({self.detail}): there is no question to answer",
            "not_waiting": f"job {self.job_id} is not waiting for an answer (it is {self.detail})",
            "answered": f"job {self.job_id} already has an answer on its way to Cekura; wait for its next question",
            "expired": f"job {self.job_id} passed its deadline while waiting: it ends timed_out",
            "too_late": f"job {self.job_id} reaches its deadline in {self.detail} ms, too soon for an answer to reach "
            "Cekura: it ends timed_out",
        }[self.result]


def answer(store: JobStore, job_id: str, text: str) -> Answered:
    """Record the answer to the question a waiting job asked; the poll message that sends it to Cekura is written
    by the same script. Raises `InvalidRequest` for an answer that is not a non-empty string of at most 10,000
    characters, or that the job's kind could not send (checked by the code that builds the body it is delivered
    in: a metric improvement's JSON-object answer obeys every request value's rules), or when the id's key holds
    something other than a job."""
    from actors.kinds import KINDS

    check_job_id(job_id)
    requests.check_answer(text, store.settings)
    try:  # a job's kind never changes: read apart from answer.lua, which decides whether it may be answered
        stored_kind = store.client.hget(store.job_key(job_id), "kind")
    except redis.ResponseError:  # WRONGTYPE: the key holds something other than a job
        raise not_a_job(job_id) from None
    name = stored_kind.decode("utf-8", "replace") if isinstance(stored_kind, bytes) else stored_kind
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is not None and kind.answer_path is not None:
        kind.answer_request("", text)  # built and checked as on delivery: raises InvalidRequest naming the problem
    s = store.settings
    reply = store.answer(job_id, text, queue_name=s.cekura_queue, namespace=s.key("dramatiq"), poll_actor=names.POLL)
    if reply[0] == "corrupt":
        raise not_a_job(job_id)
    if reply[0] == "answered" and store.client.hget(store.job_key(job_id), "answer") == text.encode():
        reply = ["ok"]  # this very answer, handled again (its first WAIT fell short): taken, not refused
    done = Answered(job_id, reply[0], reply[1] if len(reply) > 1 else "")
    log.info("job_answered" if done.result == "ok" else "answer_refused", job_id=job_id, result=done.result)
    if done.result == "ok":
        store.wait_replicated()
    return done


def retry(
    store: JobStore,
    broker: dramatiq.Broker,
    job_id: str,
    new_job_id: str | None = None,
    *,
    force: bool = False,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> Retried:
    """Submit a finished job again as a new job: same kind, public params and deadline, metadata plus `retry_of`.

    The new id is `new_job_id`, else `<job_id>-retry-<n>` with the first free n. The request is rebuilt and
    validated by `requests.build` like any other, so a record that no longer validates (a kind renamed, a deadline
    over today's limit) raises `InvalidRequest`. Giving the same `new_job_id` again returns the job the first call
    made, as `submit` does; an id held by any other job is refused (`taken`). A job of a kind whose start must not
    repeat, whose start may have reached Cekura without an answer, is refused (`unknown_start`) unless `force`:
    Cekura may still be running its operation, and the retry would start a second one. The new job continues the
    caller's trace context (`traceparent`, `tracestate`), if given, and its span links to the retried job's.
    """
    check_job_id(job_id)
    if new_job_id is not None:
        check_job_id(new_job_id)
    try:
        record = store.get(job_id)
    except redis.ResponseError:  # WRONGTYPE: the key holds something other than a job
        raise not_a_job(job_id) from None
    if record is None:
        return Retried(job_id, "unknown")
    if "kind" not in record or "state" not in record:
        raise not_a_job(job_id)
    refused = Retried.refusal(job_id, record, force=force)
    if refused is not None:
        if refused.result == "unknown_start" and new_job_id is not None and _retry_of(store, new_job_id) == job_id:
            return Retried(job_id, "submitted", job_id=new_job_id)  # a forced retry asked for again: nothing new
        return refused
    params, metadata = _stored_json(record, "params"), _stored_json(record, "metadata")
    deadline_s = JobRecord.from_fields(record).deadline_s

    def created(candidate: str) -> bool:
        """Submit the retry as `candidate`: True if that made a new job, False if the id was in use."""
        request = requests.build(
            record["kind"],
            params,
            job_id=candidate,
            metadata={**metadata, "retry_of": job_id},
            deadline_s=deadline_s,
            settings=store.settings,
            traceparent=traceparent,
            tracestate=tracestate,
        )
        if not submit(store, broker, request, link=record.get("traceparent", "")).created:
            return False
        log.info("job_retried", job_id=candidate, retry_of=job_id, kind=record["kind"])
        return True

    if new_job_id is not None:
        # The same retry asked for again answers with its job, as `submit` does; any other job's id is refused,
        # checked before submitting because a submit with an existing queued job's id re-sends its start.
        if store.client.exists(store.job_key(new_job_id)) and _retry_of(store, new_job_id) != job_id:
            return Retried(job_id, "taken", job_id=new_job_id)
        if created(new_job_id) or _retry_of(store, new_job_id) == job_id:
            return Retried(job_id, "submitted", job_id=new_job_id)
        return Retried(job_id, "taken", job_id=new_job_id)
    for number in range(1, DEFAULT_MAX_RETRY_NUMBER + 1):
        candidate = f"{job_id}-retry-{number}"
        if not requests.JOB_ID_PATTERN.fullmatch(candidate):
            raise InvalidRequest(f"job_id {job_id!r} is too long to add '-retry-{number}': give a new job id")
        # An id in use (an earlier retry's, or one a concurrent retry took since) moves on to the next number.
        if not store.client.exists(store.job_key(candidate)) and created(candidate):
            return Retried(job_id, "submitted", job_id=candidate)
    raise InvalidRequest(f"job {job_id} has been retried {DEFAULT_MAX_RETRY_NUMBER} times: give a new job id")


def _stored_json(record: dict[str, str], name: str) -> dict[str, Any]:
    value = json.loads(record.get(name) or "{}")
    return value if isinstance(value, dict) else {}


def _retry_of(store: JobStore, job_id: str) -> str | None:
    """The `retry_of` in a job's metadata: which job, if any, it was made to retry."""
    try:
        record = store.get(job_id)
    except redis.ResponseError:
        return None
    return None if record is None else _stored_json(record, "metadata").get("retry_of")
