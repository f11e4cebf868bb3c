"""Job state in Redis, changed only through the Lua scripts in `worker/store/scripts/`.

Each job is a hash `<prefix>:job:<job_id>`; active jobs also sit in the sorted set `<prefix>:schedule`, scored by
when their next step is due (the reconciler's view). Every state change that matters for correctness is one
script, i.e. one atomic step: a job's final state and its result event are written together.

Key namespaces are disjoint by construction: a job id is the *last* part of only the `job:` and `secret:` keys,
and nothing else lives under those two, so no job id (they may contain `:`) can name another job's key or any
key of the service. A key under them that holds something unexpected (another program's string, say) is
skipped and logged by the scripts, never allowed to abort a pass that serves the whole fleet.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import redis

from config.settings import Settings
from worker.broker.redis_broker import FetchClaims, Scheduled
from worker.errors import InvalidRequest
from worker.redact import redact
from worker.store import scripts
from worker.store.records import (
    CLAIM_FIELDS,
    Advanced,
    AdvanceVerdict,
    Claim,
    ClaimVerdict,
    Finish,
    FinishVerdict,
    JobRecord,
    Phase,
    RemoteCancel,
)

__all__ = ["RESULT_FIELDS", "Advanced", "Claim", "Finish", "JobRecord", "JobStore", "Phase", "RemoteCancel"]

#: How long a `rejected` marker for a request-stream entry is kept, to publish its event only once.
DEFAULT_REJECT_MARKER_TTL_S = 7 * 86_400

#: How many overdue jobs one reconciler pass takes.
DEFAULT_RECONCILE_BATCH = 500


#: The fields of every result event, in order (finish.lua writes them; rejected events add `request_id`, and the
#: events of a job with trace context add `TRACE_FIELDS`).
RESULT_FIELDS = (
    "job_id",
    "kind",
    "status",
    "cekura_status",
    "progress_id",
    "result",
    "error",
    "polls",
    "submitted_at",
    "finished_at",
    "metadata",
)

#: The fields a job's events (result and progress) add when the job has trace context; `tracestate` only when the
#: producer sent one.
TRACE_FIELDS = ("traceparent", "tracestate")


def iso_from_ms(ms: int) -> str:
    """An epoch time in ms as ISO 8601 UTC with milliseconds, e.g. `2026-11-23T12:00:00.123Z`; "" for a time no
    date holds (before year 1 or after 9999: a stray stream id or record field)."""
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return ""


def not_a_job(job_id: str) -> InvalidRequest:
    """The refusal of a job id whose key holds something other than a job (scripts answer `corrupt`): the same
    words for a submit and a cancel."""
    return InvalidRequest(f"job_id {job_id!r} can't be used: its key in Redis holds something other than a job")


def as_text(value: Any) -> str:
    """A Redis reply value (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


class NotReplicated(redis.RedisError):  # type: ignore[misc]  # redis-py types RedisError as Any
    """Fewer replicas than CEKURA_REDIS_MIN_REPLICAS acknowledged a write in time: it is not relied on yet (the
    request entry stays unacknowledged, the step's message is retried). A Redis error, so every Redis handler
    treats it as one that passes."""


class JobStore:
    """Reads and changes job state; the only code that knows the Redis layout of a job."""

    def __init__(self, client: redis.Redis, settings: Settings, *, per_thread: bool = False) -> None:
        """`per_thread`: the worker's per-message scripts use a connection per thread (see `scripts.LuaScript`)."""
        self.client = client
        self.settings = settings
        self.schedule_key = settings.key("schedule")
        self.rate_key = settings.key("ratelimit", "tat")
        self.cooldown_key = settings.key("ratelimit", "cooldown")
        self.job_prefix = settings.key("job") + ":"
        self.secret_prefix = settings.key("secret") + ":"
        #: How long a claim holds, and how long past its due time a job counts as stranded, in ms.
        self.lease_ms = int(settings.cekura_lease_s * 1000)
        self.grace_ms = int(settings.cekura_reconcile_grace_s * 1000)
        self._submit = scripts.load(client, "submit")
        self._claim = scripts.load(client, "claim", per_thread=per_thread)
        self._advance = scripts.load(client, "advance", per_thread=per_thread)
        self._finish = scripts.load(client, "finish", per_thread=per_thread)
        self._reconcile = scripts.load(client, "reconcile")
        self._reject = scripts.load(client, "reject")
        self._cool_down = scripts.load(client, "cool_down")
        self._answer = scripts.load(client, "answer")
        self._mark_start = scripts.load(client, "mark_start", per_thread=per_thread)
        self._adopt_trace = scripts.load(client, "adopt_trace", per_thread=per_thread)
        self._marker_key = settings.key("replicated")

    def job_key(self, job_id: str) -> str:
        return self.job_prefix + job_id

    def secret_key(self, job_id: str) -> str:
        """Where a job's secrets wait for its start call: a namespace of their own, apart from job records."""
        return self.secret_prefix + job_id

    # -- submission -------------------------------------------------------------------------------------------

    def submit(
        self,
        job_id: str,
        kind: str,
        params: Mapping[str, Any],
        metadata: Mapping[str, Any],
        deadline_s: float,
        secrets: Mapping[str, str],
        trace: Mapping[str, str] | None = None,
    ) -> tuple[bool, str]:
        """Record a job unless it exists; returns (created, state). `trace`: its trace context's record fields."""
        fields = {
            "job_id": job_id,
            "kind": kind,
            "params": json.dumps(params, separators=(",", ":")),
            "metadata": json.dumps(metadata, separators=(",", ":")),
        }
        args: list[Any] = [
            job_id,
            self.grace_ms,
            int(deadline_s * 1000),
            json.dumps(secrets) if secrets else "",
        ]
        for item in [*fields.items(), *(trace or {}).items()]:
            args.extend(item)
        created, state = self._submit(
            keys=[self.job_key(job_id), self.schedule_key, self.secret_key(job_id)], args=args
        )
        if as_text(state) == "corrupt":
            raise not_a_job(job_id)
        return bool(created), as_text(state)

    def adopt_trace(self, job_id: str, traceparent: str) -> str:
        """Give a job without trace context this one, unless it has one by now; returns the one it has ("" for a
        job that is gone or finished, which no span will be made for): `adopt_trace.lua`."""
        return as_text(self._adopt_trace(keys=[self.job_key(job_id)], args=[traceparent]))

    def secrets(self, job_id: str) -> dict[str, str]:
        raw = self.client.get(self.secret_key(job_id))
        return cast(dict[str, str], json.loads(raw)) if raw else {}

    # -- the job's steps --------------------------------------------------------------------------------------

    def claim(self, job_id: str, phase: Phase, seq: int, *, reserved: bool = False, owner: str = "") -> Claim:
        """Claim the job's next call; `owner` (a message's Redis id) may take back a lease it already holds."""
        s = self.settings
        reply = self._claim(
            keys=[self.job_key(job_id), self.schedule_key, self.rate_key, self.cooldown_key],
            args=[
                phase.value,
                seq,
                self.lease_ms,
                self.grace_ms,
                job_id,
                s.cekura_rate_limit_rps,
                s.cekura_rate_limit_burst,
                "1" if reserved else "0",
                owner,
            ],
        )
        return self.parse_claim(reply)

    def fetch_claims(self, actor_name: str) -> FetchClaims | None:
        """How the broker's fetch claims `actor_name`'s (poll) messages, or None with the rate limit on.

        The fleet-wide rate limit reserves a call's slot when the claim is made, so with it on, claims stay
        with the actors: made when a message is fetched, a batch could reserve slots it calls on later.
        """
        s = self.settings
        if s.cekura_rate_limit_rps > 0:
            return None
        return FetchClaims(
            actor_name=actor_name,
            job_prefix=self.job_prefix,
            schedule_key=self.schedule_key,
            rate_key=self.rate_key,
            cooldown_key=self.cooldown_key,
            lease_ms=self.lease_ms,
            grace_ms=self.grace_ms,
        )

    @staticmethod
    def parse_claim(reply: Sequence[Any]) -> Claim:
        """A claim script's reply (from `claim`, or made by the broker's fetch) as a `Claim`."""
        verdict = ClaimVerdict(as_text(reply[0]))
        if verdict is ClaimVerdict.OK:
            fields = {name: as_text(v) for name, v in zip(CLAIM_FIELDS, reply[2:], strict=True) if v is not None}
            return Claim(verdict, now_ms=int(reply[1]), job=JobRecord.from_fields(fields))
        if verdict is ClaimVerdict.WAIT:
            return Claim(
                verdict,
                wait_ms=int(reply[1]),
                wait_reason=as_text(reply[2]),
                reserved=int(reply[3]) == 1,
                remaining_ms=int(reply[4]),
            )
        return Claim(verdict)

    def advance(
        self,
        job_id: str,
        phase: Phase,
        seq: int,
        *,
        next_state: str,
        delay_ms: int,
        fields: Mapping[str, Any],
        scheduled: Sequence[Scheduled] = (),
    ) -> Advanced:
        """Record a non-final step as seq + 1 and write its next message (if given) atomically.

        The answer says whether the Cekura status or stage changed, or, if the job ended meanwhile, its session.
        """
        if len(scheduled) > 1:
            raise ValueError("advance schedules at most one message")
        s = self.settings
        message = scheduled[0] if scheduled else None
        args: list[Any] = [
            phase.value,
            seq,
            seq + 1,
            next_state,
            delay_ms,
            self.grace_ms,
            job_id,
            # A question is always published: it is how the asker learns what to answer.
            s.cekura_results_maxlen if s.cekura_progress_events or next_state == "waiting" else 0,
            message.redis_message_id if message else "",
            message.delay_ms if message else 0,
            message.data if message else b"",
        ]
        for name, value in fields.items():
            args.extend((name, value))
        keys = [self.job_key(job_id), self.schedule_key, s.cekura_progress_stream]
        keys += [message.messages_key, message.delayed_key] if message else [self.job_key(job_id)] * 2
        reply = self._advance(keys=keys, args=args)
        verdict = AdvanceVerdict(as_text(reply[0]))
        if verdict is AdvanceVerdict.OK:
            return Advanced(verdict, changed=int(reply[1]) == 1)
        if verdict is AdvanceVerdict.FINISHED:
            return Advanced(verdict, session_id=as_text(reply[1]))
        return Advanced(verdict)

    def finish(
        self,
        job_id: str,
        expect: str,
        seq: int,
        fields: Mapping[str, Any],
        *,
        remote_cancel: RemoteCancel | None = None,
        message_id: str = "",
    ) -> Finish:
        """End the job and publish its result event atomically, unless it already ended or moved on.

        With `remote_cancel` (a cancel request), a polling job of one of its kinds that has a Cekura session also
        gets its `cancel_remote` message, with Dramatiq message id `message_id`, written in the same step.
        """
        s = self.settings
        rc = remote_cancel
        args: list[Any] = [job_id, expect, seq, s.cekura_results_maxlen, s.cekura_job_ttl_s]
        if rc is not None:
            listed = [*sorted(rc.kinds), *(f"{kind}+" for kind in sorted(rc.lookup_kinds))]  # "+": finds its run by tag
            args += [" ".join(listed), rc.queue_name, rc.actor_name, message_id, f"cancel.{message_id}"]
            queue = f"{rc.namespace}:{rc.queue_name}"
            message_keys = [f"{queue}.msgs", queue]
        else:
            args += ["", "", "", "", ""]
            message_keys = [self.job_key(job_id)] * 2  # unused
        for name, value in fields.items():
            args.extend((name, value))
        reply = self._finish(
            keys=[
                self.job_key(job_id),
                self.schedule_key,
                s.cekura_results_stream,
                self.secret_key(job_id),
                *message_keys,
            ],
            args=args,
        )
        done = Finish.from_reply([as_text(part) for part in reply])
        if done.verdict is FinishVerdict.OK:
            self.wait_replicated()  # the final state and its event, before anything relies on them
        return done

    def answer(self, job_id: str, text: str, *, queue_name: str, namespace: str, poll_actor: str) -> list[str]:
        """Record the answer to a waiting job's question and write the poll message that delivers it; the reply
        is `answer.lua`'s: `ok`, or why not (`gone`, `corrupt`, `finished` + status, `not_waiting` + state,
        `answered`, `expired`, `too_late` + ms left)."""
        message_id = str(uuid.uuid4())
        queue = f"{namespace}:{queue_name}"
        reply = self._answer(
            keys=[self.job_key(job_id), self.schedule_key, f"{queue}.msgs", queue],
            args=[
                text,
                self.grace_ms,
                job_id,
                queue_name,
                poll_actor,
                message_id,
                f"answer.{message_id}",
                # time enough for an idle consumer to wake and make the call before the deadline
                self.settings.cekura_idle_wake_ms + int(self.settings.cekura_call_limit_s * 1000),
            ],
        )
        return [as_text(part) for part in reply]

    def wait_replicated(self) -> None:
        """With CEKURA_REDIS_MIN_REPLICAS > 0: return once that many replicas hold every write made so far (on any
        connection), else raise `NotReplicated`. One round trip: a marker write and `WAIT` on one connection, since
        `WAIT` counts what its own connection wrote, and the primary's replication stream is one ordered log."""
        wanted = self.settings.cekura_redis_min_replicas
        if wanted == 0:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self._marker_key, "1", px=60_000)
        pipe.execute_command("WAIT", wanted, self.settings.cekura_redis_wait_timeout_ms)
        acknowledged = int(pipe.execute()[1])
        if acknowledged < wanted:
            raise NotReplicated(
                f"NOREPLICAS {acknowledged} of {wanted} replica(s) acknowledged the write within "
                f"{self.settings.cekura_redis_wait_timeout_ms} ms"
            )

    def mark_start_sent(self, job_id: str, claim: Claim) -> str:
        """Record, just before a start call that must not be repeated, that it may reach Cekura (a later attempt
        that finds the mark never starts again). Fenced by `claim` (`mark_start.lua`): `ok` only while that claim
        holds the job's start, else `lost` (make no call), or `sent` if an earlier attempt marked it. With
        CEKURA_REDIS_MIN_REPLICAS, only once a replica has it (a failover must not lose it), else `NotReplicated`."""
        assert claim.job is not None
        reply = as_text(self._mark_start(keys=[self.job_key(job_id)], args=[claim.job.start_claim, "mark"]))
        if reply == "ok" and self.settings.cekura_redis_min_replicas:
            try:
                self.wait_replicated()
            except NotReplicated:
                self._mark_start(keys=[self.job_key(job_id)], args=[claim.job.start_claim, "undo"])
                raise
        return reply

    def cool_down(self, seconds: float) -> None:
        """Hold every worker's Cekura calls for `seconds` (after a 429), unless a longer hold is already set."""
        self._cool_down(keys=[self.cooldown_key], args=[int(seconds * 1000)])

    # -- reconciler and intake --------------------------------------------------------------------------------

    def take_overdue(self, limit: int = DEFAULT_RECONCILE_BATCH) -> tuple[list[tuple[str, str, int]], list[str]]:
        """Overdue active jobs as (job_id, state, seq), each handed to exactly one caller; and the ids whose key
        held something other than a job record (dropped from the schedule)."""
        flat, skipped = self._reconcile(keys=[self.schedule_key], args=[limit, self.grace_ms, self.job_prefix])
        jobs = [(as_text(flat[i]), as_text(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)]
        return jobs, [as_text(job_id) for job_id in skipped]

    def reject(self, marker: str, fields: Mapping[str, str]) -> str | None:
        """Publish a `rejected` event once per marker, every text in it masked (the deployment's secrets); returns the
        entry id, or None if already published."""
        s = self.settings
        args: list[Any] = [s.cekura_results_maxlen, DEFAULT_REJECT_MARKER_TTL_S]
        for name, value in fields.items():
            args.extend((name, redact(value)))
        entry = self._reject(keys=[s.cekura_results_stream, self.settings.key("rejected", marker)], args=args)
        return as_text(entry) if entry else None

    # -- reading ----------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, str] | None:
        raw = self.client.hgetall(self.job_key(job_id))
        return {as_text(k): as_text(v) for k, v in raw.items()} if raw else None
